"""Every method's traced hyperparameters have a declared valid range; at its edges each method
gives finite results (Gaussian-prior toy), and values outside are refused by name before
anything compiles (configs and sweeps alike)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import make_schedule
from jaxdiff.errors import ConfigError
from jaxdiff.operators import get_operator
from jaxdiff.samplers import SAMPLERS, batched, get_sampler
from jaxdiff.samplers.base import Range
from jaxdiff.samplers.latent_common import linear_latent
from tests.gaussian_prior import GaussianPrior

SHAPE = (4, 4, 1)
SCHED = make_schedule(1000, respacing="10", variance_type="learned_range")
GP = GaussianPrior(SHAPE, SCHED.train_alphas_cumprod)


def model_fn(params, x, t):
    """The exact eps at the nearest training index (DAPS asks at fractional timesteps)."""
    t = jnp.clip(jnp.round(jnp.asarray(t)).astype(jnp.int32), 0, GP.abar.size - 1)
    return GP.model_fn(params, x, t)


OP = get_operator("inpaint_random", image_shape=SHAPE, mask_prob_range=(0.3, 0.7))


def test_range_notation():
    r = Range.parse("(0, 1]")
    assert 1.0 in r and 0.5 in r and 0.0 not in r and 1.5 not in r and float("nan") not in r
    t = Range.parse("-1 | [0, inf)")
    assert -1 in t and 3e9 in t and -0.5 not in t and t.edges() == [-1.0, 0.0]
    with pytest.raises(ValueError):
        Range.parse("[2, 1]")


def test_every_traced_hparam_declares_a_range():
    for name in SAMPLERS.names():
        spec = get_sampler(name)
        assert set(spec.ranges) == set(spec.hparams), name
        for h, default in spec.hparams.items():
            assert default is None or default in spec.ranges[h], (name, h, default)


def _edge_sweep(spec) -> dict:
    """One setting per edge of each hparam (the others at their defaults, or mid-range)."""
    base = {}
    for h, d in spec.hparams.items():
        base[h] = d if d is not None else spec.ranges[h].edges()[-1] * 0 + 0.05
    settings = [dict(base, **{h: e}) for h in spec.hparams for e in spec.ranges[h].edges()]
    if spec.name == "daps":  # its declared coupling: lr / tau^2 at most the official 1e-4 / 0.01^2
        for st in settings:
            st["tau"] = max(st["tau"], (st["lr"] / 1e-4) ** 0.5 * 0.01)
    return {h: jnp.asarray([s[h] for s in settings], jnp.float32) for h in spec.hparams}


# one compile each (~5 s): DDRM (its eta = 1 NaN) in the default run, the others marked slow
@pytest.mark.parametrize(
    "name",
    [
        n if n == "ddrm" else pytest.param(n, marks=pytest.mark.slow)
        for n in sorted(SAMPLERS.names())
        if get_sampler(n).hparams  # ddpm and repaint have none to sweep
    ],
)
def test_methods_are_finite_at_the_edges_of_their_ranges(name):
    """E.g. DDRM at eta = 1 was NaN at its first step (sqrt of a float32 rounding below 0)."""
    spec = get_sampler(name)
    hp = _edge_sweep(spec)
    extra = {}
    if "latent_prior" in spec.needs:  # a latent method: an identity first stage
        extra["latent"] = linear_latent(np.eye(int(np.prod(SHAPE))), SHAPE, SHAPE)
    sample = spec(model_fn, SCHED, operator=OP, image_shape=SHAPE, **extra)
    n = 2
    keys = jax.random.split(jax.random.key(0), n)
    op_params = jax.vmap(OP.sample)(jax.random.split(jax.random.key(1), n))
    x = 0.3 * jax.random.normal(jax.random.key(2), (n, *SHAPE))
    y = jax.vmap(OP.apply)(op_params, x) + 0.05 * jax.random.normal(jax.random.key(3), (n, *SHAPE))
    res = jax.jit(batched(sample, sweep=True))(GP.params(v=0.1), keys, y, op_params, hp)
    div = np.asarray(res.diverged_at)
    bad = {
        tuple(f"{h}={float(hp[h][i]):g}" for h in hp): div[i].tolist()
        for i in range(div.shape[0])
        if (div[i] >= 0).any() or not np.isfinite(np.asarray(res.x0[i])).all()
    }
    assert not bad, f"{name}: diverged at the edges {bad}"


@pytest.mark.parametrize(
    "name, hparam, value, where",
    [
        ("reddiff", "lr", 0.0, r"lr=0 is outside its valid range \(0, 10\]"),
        ("reddiff", "lr", -1.0, r"lr=-1 is outside"),
        ("reddiff", "lr", 1e30, r"lr=1e\+30 is outside"),
        ("diffpir", "lambda_", 0.0, r"lambda_=0 is outside its valid range \(0, 100\]"),
        ("pigdm", "scale", -5.0, r"scale=-5 is outside its valid range \[0, 100\]"),
        ("ddrm", "eta", float("nan"), r"eta=nan is outside"),
    ],
)
def test_out_of_range_values_are_refused_by_name(name, hparam, value, where):
    with pytest.raises(ConfigError, match=f"^{name}: {where}"):
        get_sampler(name).check_hparams({hparam: value})
    with pytest.raises(ConfigError, match=f"^{name}: {where}"):  # a sweep's sequence
        get_sampler(name).check_hparams({hparam: [get_sampler(name).hparams[hparam], value]})
