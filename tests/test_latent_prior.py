"""The latent prior's schedules and its DDIM / DDPM + classifier-free-guidance scan, against
diffusers (schedule tables of the shared set; the denoising loop around a stand-in network)."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.convert import clip as convert_clip
from jaxdiff.diffusion import scheduler as sched
from jaxdiff.latent import LatentPrior, load_latent_prior
from jaxdiff.models import clip
from jaxdiff.models.clip_tokenizer import CLIPTokenizer
from jaxdiff.parity import latent_sampling

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "latent"
SD = FIXTURES / "sd_tiny"
SCHEDULER = json.loads((SD / "scheduler" / "scheduler_config.json").read_text())


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
    run = jax.jit(jax.vmap(lambda k: sample(params, k, cond, uncond, 3.0)))
    batched, swapped = run(keys), run(keys[::-1])
    # an image's draws depend on its own key alone, not on its place in the batch
    np.testing.assert_allclose(swapped.z0[0], batched.z0[1], rtol=1e-6, atol=1e-6)
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


class TextModels:
    """The latent replay's view of the fixture's classes (get / folder / sources / meta), for
    the text stage: the text encoder converted here, the tokenizer read from its folder."""

    def __init__(self, meta):
        self.meta = meta
        self.sources = {"CLIPTextModel": SD / "text_encoder", "CLIPTokenizer": SD / "tokenizer"}

    def folder(self, cls):
        return self.sources[cls]

    def get(self, cls):
        params, meta = convert_clip.convert_clip_text(self.sources[cls])
        return clip.build(meta["model_config"]), params, meta


def check_rules(got: dict, arrays, rules: dict) -> None:
    for name, rtol in rules.items():
        want, have = np.asarray(arrays[name]), np.asarray(got[name])
        assert have.shape == want.shape, name
        if rtol is None:
            np.testing.assert_array_equal(have, want, err_msg=name)
        else:
            err = np.max(np.abs(have.astype(np.float64) - want))
            assert err <= rtol * max(1.0, np.abs(want).max()), (name, err)


def test_text_stage_of_the_replay():
    z = np.load(FIXTURES / "latent.npz")
    meta = json.loads((FIXTURES / "latent.json").read_text())
    with jax.default_matmul_precision("highest"):
        got = latent_sampling.run_text(z, TextModels(meta), jnp.float32)
    check_rules(got, z, latent_sampling.TEXT_RULES)


def test_prompts_empty_prompt_and_embeddings_as_context():
    params, meta = convert_clip.convert_clip_text(SD / "text_encoder")
    prior = LatentPrior(
        standin_unet,
        SCHEDULER,
        (4, 4, 4),
        text_encoder=clip.build(meta["model_config"]),
        tokenizer=CLIPTokenizer.from_folder(SD / "tokenizer"),
    )
    params = {"text_encoder": params}
    z = np.load(FIXTURES / "latent.npz")
    with jax.default_matmul_precision("highest"):
        ctx = prior.context(params, ["", "a photo of a cat"])
    assert np.max(np.abs(np.asarray(ctx) - z["text_context"])) <= 1e-5 * 3.3
    np.testing.assert_array_equal(
        prior.context(params, z["text_context"][1]), z["text_context"][1:]
    )
    with pytest.raises(ValueError, match="embeddings"):
        prior.context(params, np.zeros((2, 2, 2, 2)))


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """The tiny pipeline converted (needs the UNet / VAE converters and models)."""
    pytest.importorskip("jaxdiff.convert.pipeline")
    from jaxdiff.convert.core import convert

    out = tmp_path_factory.mktemp("sd") / "sd_tiny"
    convert(SD, out, progress=False)
    return out


def test_pipeline_folder_ddim_parity(pipeline_dir):
    """Convert the pipeline folder, load it as a LatentPrior and replay the fixture's DDIM run
    with classifier-free guidance: every latent, guided output and the decoded image."""
    z = np.load(FIXTURES / "latent.npz")
    meta = json.loads((FIXTURES / "latent.json").read_text())
    prior, params = load_latent_prior(pipeline_dir)
    assert prior.latent_shape == z["ddim_latents"].shape[3:] + z["ddim_latents"].shape[2:3]
    ddim = meta["config"]["ddim"]
    steps = len(z["ddim_timesteps"])
    with jax.default_matmul_precision("highest"):
        ctx = prior.context(params, meta["config"]["prompts"])
        sample = jax.jit(prior.make_sampler(steps, "ddim"))
        z_T = jnp.asarray(np.moveaxis(z["ddim_latents"][0, 0], 0, -1))
        got = sample(params, jax.random.key(0), ctx[1], ctx[0], ddim["guidance_scale"], z_T=z_T)
        image = jax.jit(prior.decode)(params, got.z0[None])
    result = {
        "ddim_latents": np.moveaxis(np.asarray(got.trajectory), -1, 1)[:, None],
        "ddim_guided_out": np.moveaxis(np.asarray(got.outputs), -1, 1)[:, None],
        "ddim_image": np.moveaxis(np.asarray(image), -1, 1),
        "ddim_timesteps": prior.tables(steps)["timesteps"],
        "alphas_cumprod": sched.alphas_cumprod(prior.scheduler),
    }
    check_rules(result, z, latent_sampling.DDIM_RULES)


@pytest.mark.slow
def test_sample_latent_script(pipeline_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "cat.png"
    cmd = [sys.executable, "-m", "scripts.sample_latent", f"--model={pipeline_dir}"]
    args = ["--prompt=a photo of a cat", "--steps=2", "--num_images=2", f"--out={out}"]
    run = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert Image.open(out).size == (64, 32)
    bad = subprocess.run(
        cmd[:3] + [f"--model={SD}", "--prompt=x"], cwd=ROOT, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "convert it first" in bad.stderr
