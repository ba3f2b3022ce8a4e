"""The latent prior's schedules and its DDIM / DDPM + classifier-free-guidance scan, against
diffusers (schedule tables of the shared set; the denoising loop around a stand-in network)."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import scheduler as sched
from jaxdiff.latent import LatentPrior

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "latent"
SCHEDULER = json.loads((FIXTURES / "sd_tiny" / "scheduler" / "scheduler_config.json").read_text())


def latent_tolerance(ref):
    return 1e-4 * max(1.0, float(np.max(np.abs(ref))))


def standin_unet(params, z, t, context):
    """The generator's stand-in network (NHWC here, NCHW there; elementwise, so the same)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (z.shape[0],))
    ctx = jnp.mean(context, axis=(1, 2))[:, None, None, None]
    return jnp.tanh(params["w"] * z + t[:, None, None, None] / 1000.0) + 0.1 * ctx


def test_schedule_matches_the_shared_set():
    z = np.load(FIXTURES / "latent.npz")
    steps = len(z["ddim_timesteps"])
    np.testing.assert_array_equal(sched.alphas_cumprod(SCHEDULER), z["alphas_cumprod"])
    tables = sched.ddim_tables(SCHEDULER, steps)
    np.testing.assert_array_equal(tables["timesteps"], z["ddim_timesteps"])
    # set_alpha_to_one=false: the last step goes to alphas_cumprod[0], not 1
    assert tables["alpha_prev"][-1] == z["alphas_cumprod"][0]


@pytest.fixture(scope="module")
def loop():
    return np.load(FIXTURES / "latent_loop.npz"), json.loads(
        (FIXTURES / "latent_loop.json").read_text()
    )["cases"]


def test_loop_cases(loop):
    """Every case: prediction types, spacings, clipping, eta with recorded noise, DDPM."""
    z, cases = loop
    with jax.default_matmul_precision("highest"):
        for i, case in enumerate(cases):
            c = {k[len(f"case{i}_") :]: z[k] for k in z.files if k.startswith(f"case{i}_")}
            cfg = case["scheduler"]
            np.testing.assert_allclose(sched.alphas_cumprod(cfg), c["alphas_cumprod"], atol=2e-7)
            lat = np.moveaxis(c["latents"][:, 0], 1, -1)  # (S+1, h, w, c)
            prior = LatentPrior(standin_unet, cfg, lat.shape[1:])
            tables = prior.tables(case["steps"], case["method"])
            np.testing.assert_array_equal(tables["timesteps"], c["timesteps"])
            sample = jax.jit(prior.make_sampler(case["steps"], case["method"]))
            got = sample(
                {"unet": {"w": jnp.float32(0.8)}},
                jax.random.key(0),
                jnp.asarray(c["context"][1]),
                jnp.asarray(c["context"][0]),
                case["guidance_scale"],
                case["eta"],
                z_T=jnp.asarray(lat[0]),
                noise=jnp.asarray(np.moveaxis(c["noise"][:, 0], 1, -1)),
            )
            err = np.max(np.abs(np.asarray(got.trajectory) - lat))
            assert err <= latent_tolerance(lat), (i, case, err)
            outs = np.moveaxis(c["outputs"][:, 0], 1, -1)
            assert np.max(np.abs(np.asarray(got.outputs) - outs)) <= 1e-5 * max(
                1, np.abs(outs).max()
            )


def test_sampler_draws_from_its_key_and_batches():
    prior = LatentPrior(standin_unet, SCHEDULER, (4, 4, 2))
    sample = prior.make_sampler(3)
    params = {"unet": {"w": jnp.float32(0.8)}}
    cond, uncond = jnp.ones((3, 5)), jnp.zeros((3, 5))
    keys = jax.random.split(jax.random.key(1), 2)
    guided = jax.jit(lambda k: sample(params, k, cond, uncond, 3.0))
    batched = jax.jit(jax.vmap(guided))(keys)
    one = guided(keys[1])
    np.testing.assert_allclose(batched.z0[1], one.z0, rtol=1e-6, atol=1e-6)
    assert not np.allclose(batched.z0[0], batched.z0[1])
    plain = jax.jit(lambda k: sample(params, k, cond))(keys[1])  # the conditional output alone
    assert plain.outputs.shape == (3, 4, 4, 2)


def test_bad_scheduler_settings():
    for bad in (
        {"beta_schedule": "quadratic"},
        {"timestep_spacing": "middle"},
        {"prediction_type": "score"},
        {"thresholding": True},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sched.normalize_config({**SCHEDULER, **bad})
    with pytest.raises(ValueError, match="num_steps"):
        sched.inference_timesteps(SCHEDULER, 0)
    with pytest.raises(ValueError, match="method"):
        LatentPrior(standin_unet, SCHEDULER, (4, 4, 2)).tables(4, "euler")
