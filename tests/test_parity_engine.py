"""The replay engine (jaxdiff/parity/common.py): the per-array rule, the float64-replay floor,
matching non-finite values, index sets compared as sets, the inputs / not-compared listing, and
a fixture folder replayed with one glob (files that are not trajectories skipped, saying why)."""

import json
import shutil

import numpy as np
import pytest

from jaxdiff.parity.__main__ import main
from jaxdiff.parity.common import Fixture, NotAFixture, compare
from jaxdiff.parity.operators import index_sets


def test_rule_is_atol_plus_rtol_times_max_ref():
    ref = np.array([[1.0, -600.0], [2.0, 3.0]])
    got = ref + 1e-3  # |x| ~ 600: an absolute 1e-3 is 2e-6 relative
    assert not compare(got, ref, atol=1e-4)["pass"]
    out = compare(got, ref, atol=0.0, rtol=1e-5)
    assert out["pass"] and out["tol"] == pytest.approx(6e-3) and out["rtol"] == 1e-5
    # per step: scale_k = max|ref_k|, so the small step is held to its own size
    out = compare(got, ref, rtol=1e-5, per_step=True)
    assert not out["pass"] and out["per_step_tol"] == pytest.approx([6e-3, 3e-5])
    # the official code's own float32-vs-float64 difference, 3x, is the floor
    out = compare(got, ref, rtol=1e-5, per_step=True, f64=[1e-4, 5e-4])
    assert out["pass"] and out["f64_replay_x3"] == pytest.approx(1.5e-3)


def test_non_finite_reference_values_must_match():
    ref = np.array([1.0, np.inf, np.nan])
    assert compare(np.array([1.0, np.inf, np.nan]), ref, 1e-6)["pass"]
    assert not compare(np.array([1.0, np.inf, 0.0]), ref, 1e-6)["pass"]
    assert not compare(np.array([1.0, 1.0, np.nan]), ref, 1e-6)["pass"]


def _fixture(arrays):
    return Fixture("x.npz", arrays, {}, None, None, "float32")


def test_index_sets_compare_as_sets_in_the_stored_order():
    mask = np.ones((4, 4), np.float32)
    mask[1:3, 1:3] = 0
    missing_r = np.nonzero(mask.reshape(-1) == 0)[0] * 3
    missing = np.concatenate([missing_r, missing_r + 1, missing_r + 2])
    kept = np.setdiff1d(np.arange(48), missing)
    perm = np.random.default_rng(0).permutation(len(missing))  # torch.randperm order
    fx = _fixture({"op_mask": mask, "op_kept_indices": kept, "op_missing_indices": missing[perm]})
    params = index_sets(fx, (4, 4, 3), "op_")
    assert all(r["pass"] for r in fx.results.values()), fx.results
    np.testing.assert_array_equal(params["missing_indices"], missing[perm])  # order kept
    wrong = missing.copy()
    wrong[0] = kept[0]
    fx = _fixture({"op_mask": mask, "op_kept_indices": kept, "op_missing_indices": wrong})
    index_sets(fx, (4, 4, 3), "op_")
    assert not fx.results["op_missing_indices"]["pass"]


def test_report_lists_inputs_and_every_array_not_compared():
    fx = _fixture({"x_t": np.ones(3), "noise": np.zeros(3), "extra": np.ones(2), "pic": 1.0})
    fx["noise"]
    fx.check("x_t", np.ones(3), 1e-6)
    fx.check("absent", np.ones(3), 1e-6)  # a trimmed copy without it: nothing to compare
    fx.skip("pic", "a picture only")
    r = fx.report("test")
    assert r["pass"] and list(r["arrays"]) == ["x_t"] and r["inputs"] == ["noise"]
    assert r["not_compared"] == {"extra": "not produced by this replay", "pic": "a picture only"}


def test_a_folder_replays_with_one_glob(fixtures_dir, tmp_path, capsys):
    """Operator probes beside the trajectories are skipped with the reason, not failures."""
    shutil.copy(fixtures_dir / "dps_operator_arrays.npz", tmp_path)
    np.savez(tmp_path / "svd_probes.npz", probe_x=np.zeros(3))
    files = sorted(tmp_path.glob("*.npz"))
    assert main([str(f) for f in files]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert [r["pass"] for r in lines] == [None, None]
    assert "none of a dps trajectory's arrays" in lines[0]["skipped"]
    assert "no replay for this file name" in lines[1]["skipped"]
    with pytest.raises(NotAFixture):
        Fixture.load(tmp_path / "dps_operator_arrays.npz", "dps", trajectory=("x_t",))


def test_beyond_cap_decides_from_the_reference_levels():
    """A state is past the float32 horizon where factor x its float64 level leaves the cap
    1e-3 * max(1, max|ref|); a missing level never is."""
    from jaxdiff.parity.common import beyond_cap

    refs = {"x_t": np.full((2, 3), 5.0), "x0_hat": np.full((2, 3), 0.9)}
    levels = {"x_t": [1e-4, 2e-3], "x0_hat": [4e-4, 4.9e-4]}
    assert beyond_cap(levels, refs, 1e-3, 2.0) == []  # 4e-3 < 5e-3; 9.8e-4 < 1e-3
    levels["x0_hat"] = [4e-4, 6e-4]
    assert beyond_cap(levels, refs, 1e-3, 2.0) == ["x0_hat"]
    # DMPS's rule: 3x on x_t, 1x elsewhere
    assert beyond_cap({"x_t": [2e-3], "x0_hat": None}, refs, 1e-3, {"x_t": 3.0}) == ["x_t"]
    assert beyond_cap({"x_t": [2e-3], "x0_hat": [None, 9e-4]}, refs, 1e-3) == []


def test_teacher_forced_runs_each_step_from_the_reference_inputs():
    """Step i runs on the schedule's prefix [0..n-1-i] with the full chain's tables (step 0's
    clipped variance included), from x_T then the reference's x_t[i-1], with draws i.. ."""
    from types import SimpleNamespace

    from jaxdiff.diffusion import make_schedule
    from jaxdiff.parity.common import teacher_forced

    sched = make_schedule(1000, "linear", variance_type="learned_range", respacing="4")
    seen = []

    def run(schedule, start, draws):
        seen.append(schedule)
        n = schedule.num_steps
        traj = {"k": np.full((2, n), n - 1), "x": np.asarray(start)[:, None] + draws["z"]}
        return SimpleNamespace(trajectory=traj)

    rng = np.random.default_rng(0)
    x_T, ref = rng.normal(size=(2, 3)), rng.normal(size=(4, 2, 3))
    draws = {"z": rng.normal(size=(2, 4, 3))}
    out = teacher_forced(run, sched, x_T, ref, draws)
    assert out["k"].tolist() == [[3, 3], [2, 2], [1, 1], [0, 0]]
    starts = np.concatenate([x_T[None], ref[:-1]])
    np.testing.assert_array_equal(out["x"], starts + np.swapaxes(draws["z"], 0, 1))
    for i, sub in enumerate(seen):
        np.testing.assert_array_equal(sub.timestep_map, sched.timestep_map[: 4 - i])
        for name, table in sched.tables.items():
            np.testing.assert_array_equal(sub.tables[name], table[: 4 - i], err_msg=name)
