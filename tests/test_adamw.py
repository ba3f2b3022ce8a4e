"""AdamW with early stopping (jaxdiff/samplers/adamw.py) against the official ReSample run
(tests/fixtures/resample): the pixel optimisation (tolerance stop) and the final latent
optimisation through the VQ decoder (the 200-step window stop) reproduce the recorded results and
stop at the recorded step; clear errors."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.operators import get_operator
from jaxdiff.parity.common import nchw_to_nhwc
from jaxdiff.samplers.adamw import adamw_minimize

FIX = pathlib.Path(__file__).parent / "fixtures"
RS = FIX / "resample" / "resample_sr4_b1.npz"


def _arrays():
    d = dict(np.load(RS))
    meta = json.loads(RS.with_suffix(".json").read_text())
    return d, meta


def _operator(d):
    x = nchw_to_nhwc(d["x0"])[0]
    factor = x.shape[0] // nchw_to_nhwc(d["y"]).shape[1]
    return get_operator("super_resolution", image_shape=x.shape, factor=factor)


@pytest.mark.slow
def test_pixel_optimisation_is_the_official_one():
    """pixel_optimization: AdamW(lr 1e-2) on MSE(y, A(x)) until the loss < 1e-6: the same 425
    steps, the result within 1e-4 (measured 4.6e-6; the official float32-vs-float64 level is
    4.7e-5)."""
    d, meta = _arrays()
    op = _operator(d)
    p = op.sample(None)
    y = jnp.asarray(nchw_to_nhwc(d["y"])[0])

    def loss(x):
        return jnp.mean((y - op.apply(p, x)) ** 2)

    with jax.default_matmul_precision("highest"):
        res = jax.jit(lambda x: adamw_minimize(loss, x, lr=1e-2, tol=1e-6, max_iters=2000))(
            jnp.asarray(nchw_to_nhwc(d["pixel_opt_in"][0])[0])
        )
    assert int(res.steps) == int(d["pixel_opt_iters"][0]) == 425
    np.testing.assert_allclose(float(res.loss), d["pixel_opt_loss"][0], rtol=1e-3)
    want = nchw_to_nhwc(d["pixel_opt_out"][0])[0]
    err = np.abs(np.asarray(res.x) - want).max()
    assert err < max(1e-4, 3 * meta["f64_replay"]["max_abs_diff_pixel_opt_out"]), err


@pytest.fixture(scope="module")
def ldm(tmp_path_factory):
    """The fixture's LDM: ldm_tiny.ckpt with the yaml's latent size and scale factor, its VQ
    codebook x the recorded scale (tests/fixtures/resample/README.txt)."""
    from jaxdiff.convert.ldm_single_file import convert_ldm_file
    from jaxdiff.latent import latent_fns, load_latent_prior

    d, meta = _arrays()
    params_ = meta["ldm_config"]["model"]["params"]
    tmp = tmp_path_factory.mktemp("ldm")
    unet = json.loads((FIX / "adm_tiny_legacy.json").read_text())
    unet["kwargs"]["image_size"] = int(params_["unet_config"]["params"]["image_size"])
    (tmp / "unet.json").write_text(json.dumps(unet))
    vq = json.loads((FIX / "latent" / "vq_tiny" / "config.json").read_text())
    vq["scaling_factor"] = float(params_.get("scale_factor", 1.0))
    (tmp / "vq.json").write_text(json.dumps(vq))
    convert_ldm_file(FIX / "latent" / "ldm_tiny.ckpt", tmp / "ldm", unet_config=tmp / "unet.json",
                     vq_config=tmp / "vq.json")  # fmt: skip
    prior, params = load_latent_prior(tmp / "ldm")
    scale = float(meta["command"].split("--codebook-scale")[1].split()[0]) if (
        "--codebook-scale" in meta["command"]) else 2048.0  # fmt: skip
    fs = dict(params["first_stage"])
    emb = np.asarray(fs["quantize"]["embedding"]["embedding"], np.float32) * np.float32(scale)
    fs["quantize"] = {"embedding": {"embedding": emb}}
    params = {**params, "first_stage": fs}
    return latent_fns(prior, params), params


@pytest.mark.slow
def test_final_latent_optimisation_is_the_official_one(ldm):
    """latent_optimization from the last z: AdamW(lr 5e-3) on MSE(y, A(D(z))) with the
    200-step window rule: the same 201 steps (the window stop), the result within 3x the official
    float32-vs-float64 level (measured 8.2e-5 against 3 x 1.35e-4; max|z| 25)."""
    d, meta = _arrays()
    fns, params = ldm
    op = _operator(d)
    p = op.sample(None)
    y = jnp.asarray(nchw_to_nhwc(d["y"])[0])

    def loss(z):
        return jnp.mean((y - op.apply(p, fns.decode(params, z))) ** 2)

    z0 = jnp.asarray(nchw_to_nhwc(d["z_end"][-1])[0])
    with jax.default_matmul_precision("highest"):
        res = jax.jit(
            lambda z: adamw_minimize(loss, z, lr=5e-3, tol=1e-6, max_iters=500, window=200)
        )(z0)
    assert int(res.steps) == int(d["latent_opt_iters"][-1]) == 201
    want = nchw_to_nhwc(d["latent_opt_out"][-1])[0]
    err = np.abs(np.asarray(res.x) - want).max()
    level = 3 * meta["f64_replay"]["max_abs_diff_latent_opt_out"]
    assert err < max(1e-5 * np.abs(want).max(), level), err


def test_stopping_rules_and_errors():
    """A quadratic: the tolerance stop, the max_iters stop, the window stop (a loss that rises),
    and bad settings refused by name."""
    quad = lambda x: jnp.sum((x - 3.0) ** 2)  # noqa: E731
    r = adamw_minimize(quad, jnp.zeros(4), lr=0.1, tol=1e-4, max_iters=5000, weight_decay=0.0)
    assert float(r.loss) < 1e-4 and 10 < int(r.steps) < 5000
    assert np.allclose(np.asarray(r.x), 3.0, atol=2e-2)
    r = adamw_minimize(quad, jnp.zeros(4), lr=0.1, tol=0.0, max_iters=7)
    assert int(r.steps) == 7 and float(r.first_loss) == 36.0
    rising = lambda x: -jnp.sum(x)  # noqa: E731  (a step along the gradient lowers it...)
    r = adamw_minimize(lambda x: rising(x) ** 2, jnp.ones(2), lr=0.5, tol=0.0, max_iters=400,
                       window=3)  # fmt: skip
    assert int(r.steps) < 400  # ...until it oscillates around 0: the window rule stops it
    with pytest.raises(ValueError, match="max_iters must be >= 1"):
        adamw_minimize(quad, jnp.zeros(2), lr=0.1, tol=0.0, max_iters=0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        adamw_minimize(quad, jnp.zeros(2), lr=0.1, tol=0.0, max_iters=3, window=0)
