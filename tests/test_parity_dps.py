"""DPS trajectory parity with the official DPS repository (fixture README part (d)): batch-coupled
norm on the b2 files, per-sample on the b1 files; operators from the registry built from the
stored mask / kernel / Resizer tables; every draw replayed, every x_t compared."""

import jax
import numpy as np
import pytest

from jaxdiff.parity import dps

FAST = ["dps_inpaint_box_b2", "dps_super_resolution_b1"]
SLOW = [
    "dps_inpaint_box_b1",
    "dps_gaussian_blur_b2",
    "dps_gaussian_blur_b1",
    "dps_super_resolution_b2",
]


def check(r):
    assert r["pass"], r
    # requirement 1e-3; measured 2e-5 .. 2e-4 (the b1 inpainting file is the chaotic one)
    assert r["arrays"]["x_t"]["max_abs_err"] < 5e-4
    assert r["arrays"]["norm"]["max_rel_err"] < 1e-5
    assert r["batch_coupled_norm"] == (r["batch"] > 1)


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_dps_trajectory(fixtures_dir, name):
    with jax.default_matmul_precision("highest"):
        r = dps.replay(fixtures_dir / f"{name}.npz")
    check(r)
    if "super_resolution" in name:  # the registry's Resizer tables are DPS's
        assert r["arrays"]["resizer_dim2_weights"]["max_abs_err"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + SLOW)
def test_dps_float64_matches_the_reference_float64_replay(fixtures_dir, name):
    """float64 replay: per step, its error against the float32 reference equals the sidecar's
    torch float64-vs-float32 numbers (our float64 DPS agrees with torch's float64 run)."""
    r = dps.replay(fixtures_dir / f"{name}.npz", dtype="float64")
    assert r["pass"], r
    ours = np.array(r["arrays"]["x_t"]["per_step_max_abs_err"])
    ref = np.array(r["reference_f64_replay_max_abs_diff_x_t_per_step"])
    np.testing.assert_allclose(ours, ref, rtol=0.1, atol=2e-6)
