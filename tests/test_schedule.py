"""Schedules, respacing and Gaussian algebra against closed forms and guided-diffusion's
gaussian_diffusion.py anchors."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.diffusion import (
    eps_from_score,
    eps_from_x0,
    get_betas,
    log_variance,
    make_schedule,
    schedule_from_meta,
    score_from_eps,
    space_timesteps,
    split_model_output,
    t_for_sigma,
    x0_from_eps,
)


def test_linear_schedule_anchors():
    tb = make_schedule(1000).tables
    np.testing.assert_allclose(
        tb["alphas_cumprod"][[0, 499, 999]], [0.9999, 0.0785872429, 4.035829765e-05], rtol=1e-9
    )
    np.testing.assert_allclose(
        tb["posterior_variance"][[1, 999]], [5.453187661e-05, 0.0199999835], rtol=1e-8
    )
    assert tb["posterior_variance"][0] == 0.0
    np.testing.assert_allclose(
        tb["posterior_log_variance_clipped"][:2], [-9.8167251, -9.8167251], rtol=1e-7
    )
    assert tb["posterior_mean_coef1"][0] == 1.0 and tb["posterior_mean_coef2"][0] == 0.0
    # fixed_large: [btilde_1, beta_1, ..., beta_{T-1}]
    np.testing.assert_allclose(np.exp(tb["large_log_variance"][1:]), tb["betas"][1:], rtol=1e-12)


def test_linear_scales_with_training_steps_and_cosine():
    np.testing.assert_allclose(get_betas("linear", 500)[[0, -1]], [2e-4, 0.04])
    np.testing.assert_allclose(get_betas("linear", 10, 1e-4, 0.02)[[0, -1]], [1e-4, 0.02])
    b = get_betas("cosine", 1000)
    f = np.cos((np.arange(1001) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(b, np.minimum(1 - f[1:] / f[:-1], 0.999), rtol=1e-12)
    assert b.max() == 0.999


@pytest.mark.parametrize(
    "spec, n, head, tail",
    [
        ("250", 250, [0, 4, 8, 12, 16], [991, 995, 999]),
        ("100", 100, [0, 10, 20], [979, 989, 999]),
        ("10,10,10", 30, [0, 37, 74], [962, 999]),
        (20, 20, [0, 53, 105], [946, 999]),
        ("ddim25", 25, [0, 40, 80], [920, 960]),
        ("ddim50", 50, [0, 20, 40], [960, 980]),
        ("leading20", 20, [0, 50, 100], [900, 950]),
        ("trailing20", 20, [49, 99], [949, 999]),
        (None, 1000, [0, 1, 2], [998, 999]),
    ],
)
def test_space_timesteps(spec, n, head, tail):
    kept = space_timesteps(1000, spec)
    assert len(kept) == n and kept[: len(head)] == head and kept[-len(tail) :] == tail


def test_respacing_keeps_alpha_bar_and_recomputes_betas():
    base = make_schedule(1000)
    s = make_schedule(1000, respacing="250")
    np.testing.assert_allclose(s.alphas_cumprod, base.alphas_cumprod[s.timestep_map], rtol=1e-12)
    np.testing.assert_allclose(s.betas[[0, 1, -1]], [1e-4, 5.9907e-4, 0.0775193], rtol=1e-4)
    assert s.num_steps == 250 and s.num_train_timesteps == 1000


@pytest.mark.parametrize(
    "spec, match",
    [
        ("300,300,300,300", "cannot take 300 steps"),
        ("ddim999", "no integer stride"),
        ("abc", "expected an int"),
        ("0", "positive"),
        ("leading2000", "1 <= N"),
        (2.5, "int or a string"),
    ],
)
def test_bad_respacing_is_a_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


def test_bad_schedule_settings():
    with pytest.raises(ValueError, match="unknown beta_schedule"):
        make_schedule(1000, beta_schedule="quadratic")
    with pytest.raises(ValueError, match="unknown variance_type"):
        make_schedule(1000, variance_type="learned_sigma")
    with pytest.raises(ValueError, match="schedule_dtype"):
        make_schedule(1000, schedule_dtype="float16")
    with pytest.raises(ValueError, match="beta_start <= beta_end"):
        make_schedule(1000, beta_start=0.02, beta_end=1e-4)


def test_float32_schedule_is_diffusers_convention():
    s = make_schedule(
        1000, beta_start=1e-4, beta_end=0.02, schedule_dtype="float32", respacing="leading20"
    )
    assert s.convention == "diffusers"
    assert np.all(s.train_alphas_cumprod.astype(np.float32) == s.train_alphas_cumprod)
    ref = make_schedule(1000).train_alphas_cumprod
    np.testing.assert_allclose(s.train_alphas_cumprod, ref, rtol=2e-6)
    # diffusers clamps the posterior variance at 1e-20 instead of replacing entry 0
    assert s.tables["posterior_log_variance_clipped"][0] == pytest.approx(np.log(1e-20))


def test_schedule_from_meta():
    meta = {
        "num_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "variance_type": "learned_range",
        "schedule_dtype": "float64",
    }
    s = schedule_from_meta(meta, respacing="20")
    assert s.variance_type == "learned_range" and s.num_steps == 20 and s.timestep_map[-1] == 999


def test_eps_x0_score_roundtrip_and_learned_range():
    s = make_schedule(1000, respacing="50", variance_type="learned_range")
    c = s.gather(17, jnp.float64)
    rng = np.random.default_rng(0)
    x, eps = rng.normal(size=(2, 5))
    x0 = x0_from_eps(c, x, eps)
    np.testing.assert_allclose(eps_from_x0(c, x, x0), eps, rtol=1e-5)
    np.testing.assert_allclose(eps_from_score(c, score_from_eps(c, eps)), eps, rtol=1e-6)
    # Tweedie: x0 = (x + (1 - abar) score) / sqrt(abar)
    abar = float(c["alphas_cumprod"])
    np.testing.assert_allclose(
        (x + (1 - abar) * score_from_eps(c, eps)) / np.sqrt(abar), x0, rtol=1e-5
    )
    lv = log_variance("learned_range", c, jnp.array([-1.0, 1.0]))
    np.testing.assert_allclose(
        lv, [s.tables["posterior_log_variance_clipped"][17], np.log(s.betas[17])], rtol=1e-6
    )


def test_split_model_output_checks_channels():
    out = jnp.zeros((4, 4, 3))
    with pytest.raises(ValueError, match="outputs 3 channels but variance_type 'learned_range'"):
        split_model_output(out, 3, "learned_range")
    with pytest.raises(ValueError, match="outputs 6 channels"):
        split_model_output(jnp.zeros((4, 4, 6)), 3, "fixed_small")


def test_t_for_sigma_matches_reference():
    abar = make_schedule(1000).train_alphas_cumprod
    assert [int(t_for_sigma(abar, s)) for s in (0.025, 0.05, 0.1, 0.2)] == [4, 11, 26, 57]
