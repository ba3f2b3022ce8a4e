"""jaxdiff.parity.own_level: a float32 replay that misses the reference's float32 level passes
only when jaxdiff's float64 replay passes and its own float32 level (bounded) explains the gap."""

from __future__ import annotations

import types

import numpy as np

from jaxdiff.parity import common, own_level

REF = np.zeros((3, 4))  # three steps of a recorded state
LEVEL = np.array([1e-5, 1e-5, 1e-5])  # the official float32-vs-float64 level per step


def fake_module(err32: float, err64: float):
    """A replay module whose float32 chain is `err32` off the reference at the last step and
    whose float64 chain is `err64` off it."""

    def replay(path, model_dir=None, dtype="float32"):
        got = REF.copy()
        got[-1] = err32 if dtype == "float32" else err64
        out = common.compare(got, REF, 1e-7, 0.0, per_step=True, f64=LEVEL)
        if common.CHECKED is not None:
            common.CHECKED["x_t"] = common.Checked(got, REF, 1e-7, 0.0, True, None, LEVEL)
        return {"file": str(path), "pass": out["pass"], "arrays": {"x_t": out}}

    return types.SimpleNamespace(replay=replay)


def test_a_gap_within_both_float32_levels_passes_and_says_so():
    # 4e-5 > 3 x 1e-5; our own float32 level (|f32 - f64| = 3.9e-5) explains it
    r = own_level.replay(fake_module(4e-5, 1e-6), "f.npz")
    assert r["pass"] and r["judged_with_own_float32_level"]
    assert np.isclose(r["arrays"]["x_t"]["own_float32_level"], 3.9e-5)


def test_a_float64_chain_off_the_reference_keeps_the_failure():
    r = own_level.replay(fake_module(4e-5, 3.5e-5), "f.npz")
    assert not r["pass"] and r["float64_replay_fails"]


def test_own_level_counts_only_up_to_its_bound():
    # err 5e-4: our own level 5e-4 is 50x the reference's; only 10x counts (floor 3e-4)
    r = own_level.replay(fake_module(5e-4, 0.0), "f.npz")
    assert not r["pass"] and r["arrays"]["x_t"]["tol"] == 3 * own_level.OWN_LEVEL_MAX * 1e-5


def test_a_passing_replay_is_not_replayed_again():
    calls = []
    mod = fake_module(1e-6, 0.0)
    inner = mod.replay
    mod.replay = lambda *a, **k: calls.append(k.get("dtype", "float32")) or inner(*a, **k)
    assert own_level.replay(mod, "f.npz")["pass"] and calls == ["float32"]
    assert common.CHECKED is None  # the recorder is off again


def capped_module(err32: float, level0: float, cap: float = 1e-3):
    """As fake_module, with the replay's cap; the reference's own level at step 0 is `level0`
    (past the cap when 3 x level0 > cap: that step is then held to 3 x level0, as
    jaxdiff.parity.mmps.capped does)."""
    level = np.array([level0, 1e-5, 1e-5])

    def replay(path, model_dir=None, dtype="float32"):
        got = REF.copy()
        got[0] = err32 if dtype == "float32" else 0.0
        out = common.compare(got, REF, 1e-7, 0.0, per_step=True, f64=level)
        out["cap"] = cap
        limit = np.maximum(cap, 3 * level)
        out["steps_past_cap"] = np.nonzero(3 * level > cap)[0].tolist()
        out["pass"] = bool(out["pass"] and np.all(np.asarray(out["per_step_max_abs_err"]) <= limit))
        if common.CHECKED is not None:
            common.CHECKED["x_t"] = common.Checked(got, REF, 1e-7, 0.0, True, None, level)
        return {"file": str(path), "pass": out["pass"], "arrays": {"x_t": out}}

    return types.SimpleNamespace(replay=replay)


def test_a_step_past_the_cap_is_held_to_the_rejudged_floor_not_the_cap():
    # the reference's own step-0 level 1e-2 is past the cap 1e-3; ours (|f32 - f64| = 5e-2)
    # counts up to 10x: floor 3 x 5e-2 holds the step, the cap does not apply there
    r = own_level.replay(capped_module(5e-2, 1e-2), "f.npz")
    assert r["pass"] and r["arrays"]["x_t"]["steps_past_cap"] == [0]


def test_a_step_inside_the_cap_keeps_the_cap():
    # the reference's step-0 level 2e-4 is inside the cap; our own level 2e-3 would floor it
    # at 6e-3 but the cap 1e-3 still holds
    r = own_level.replay(capped_module(2e-3, 2e-4), "f.npz")
    assert not r["pass"] and "steps_past_cap" not in r["arrays"]["x_t"]
