"""jaxdiff/benchmark.py and jaxdiff/profiling.py, the libraries behind scripts/benchmark.py,
scripts/profile_vjp.py and scripts/ab_custom_vjp.py."""

from __future__ import annotations

import types

import pytest

from jaxdiff import benchmark, profiling
from jaxdiff.models import fused


def _row(sampler, per_nfe, model="tiny", batch=1):
    return {
        "model": model,
        "batch": batch,
        "dtype": "float32",
        "sampler": sampler,
        "seconds_per_nfe": per_nfe,
        "seconds_per_nfe_median": 2 * per_nfe,
    }


def test_ratios_are_per_group_over_ddpm():
    results = [
        _row("ddpm", 1.0),
        _row("dps", 3.0),
        _row("dps", 5.0, batch=4),  # no DDPM in its group: no ratio
        _row("ddim", 2.0),
        {"model": "tiny", "batch": 1, "dtype": "float32", "sampler": "daps", "error": "failed"},
    ]
    rows = benchmark.ratios(results)
    assert [(r["sampler"], r["ratio_to_ddpm"]) for r in rows] == [("dps", 3.0), ("ddim", 2.0)]
    assert all(r["ratio_to_ddpm_median"] == r["ratio_to_ddpm"] for r in rows)


def test_batch_ratios_are_per_image_over_batch_one():
    def row(batch, per_nfe, mem, remat="none"):
        r = {**_row("dps", per_nfe, batch=batch), "remat": remat}
        return {**r, "compiled_temp_bytes_per_image": mem}

    results = [
        row(1, 2.0, 100),
        row(4, 3.0, 80),
        row(4, 1.0, 50, remat="blocks"),  # its batch-1 run failed: no ratio
        {"model": "tiny", "batch": 1, "dtype": "float32", "sampler": "dps", "remat": "blocks"}
        | {"error": "failed"},
    ]
    (r,) = benchmark.batch_ratios(results)
    assert (r["batch"], r["remat"], r["time_per_image_ratio"]) == (4, "none", 1.5)
    assert r["time_per_image_ratio_median"] == 1.5 and r["memory_per_image_ratio"] == 0.8


def test_unknown_sampler_is_refused_before_any_compile():
    with pytest.raises(KeyError, match="unknown sampler"):
        benchmark.run_benchmark(["tiny"], ["nope"], [1], ["float32"], 1, 1, False)


@pytest.mark.slow  # compiles two samplers (~20 s)
def test_tiny_run_has_the_json_fields():
    lines = []
    out = benchmark.run_benchmark(
        ["tiny"], ["ddpm"], [1], ["float32"], 1, 1, ("none",), lines.append
    )
    assert set(out) == {
        *("device", "host", "versions", "steps", "repeats", "results"),
        *("ratios", "remat_ratios", "batch_ratios"),
    }
    (r,) = out["results"]
    assert r["model"] == "tiny" and r["nfe"] == 1 and r["seconds_per_nfe"] > 0
    assert out["ratios"] == [] and sum("ms/NFE/img" in line for line in lines) == 1
    assert lines[1].startswith("  [1/1] ddpm b=1 float32: compiling")


def test_progress_is_logged_as_each_compile_and_round_starts(monkeypatch):
    events = []

    def fake_compile(arch, config, diffusion, params, name, batch, dtype, steps, remat="none"):
        events.append(f"COMPILE {name}")
        if name == "bad":
            raise RuntimeError("no such kernel\nsecond line")
        sched = types.SimpleNamespace(num_steps=steps)
        return (lambda *a: events.append(f"CALL {name}") or 0.0), (), sched, None

    monkeypatch.setattr(benchmark, "compile_method", fake_compile)
    monkeypatch.setattr(benchmark, "nfe_of", lambda name, n, o: n)
    monkeypatch.setattr(benchmark, "temp_bytes", lambda c: None)
    monkeypatch.setattr(benchmark, "network_flops", lambda *a, **k: None)
    out = benchmark.bench_group(
        "adm", benchmark.TINY, None, None, ["ddpm", "bad"], [1], "float32", steps=2, repeats=2,
        log=events.append,
    )  # fmt: skip
    assert events[:3] == [
        "  [1/2] ddpm b=1 float32: compiling ...",
        "COMPILE ddpm",
        "CALL ddpm",  # the warm-up
    ]
    assert events[3].startswith("  [1/2] ddpm: compiled in ")
    assert events[5:7] == ["COMPILE bad", "  [2/2] bad: failed (RuntimeError: no such kernel)"]
    assert events[7:] == [
        "  timing round 1/2 of 1 program(s) ...",
        "CALL ddpm",
        "  timing round 2/2 of 1 program(s) ...",
        "CALL ddpm",
    ]
    assert "Traceback" in out[1]["traceback"] and out[0]["seconds_per_call"] >= 0


def test_batch_sizes_are_compiled_first_then_timed_interleaved(monkeypatch):
    # the per-image ratio between batch sizes must not carry the machine's drift between groups
    events = []

    def fake_compile(arch, config, diffusion, params, name, batch, dtype, steps, remat="none"):
        events.append(f"COMPILE {name} b{batch}")
        sched = types.SimpleNamespace(num_steps=steps)
        return (lambda *a: events.append(f"CALL {name} b{batch}") or 0.0), (), sched, None

    monkeypatch.setattr(benchmark, "compile_method", fake_compile)
    monkeypatch.setattr(benchmark, "nfe_of", lambda name, n, o: n)
    monkeypatch.setattr(benchmark, "temp_bytes", lambda c: None)
    monkeypatch.setattr(benchmark, "network_flops", lambda *a, **k: None)
    out = benchmark.bench_group(
        "adm", benchmark.TINY, None, None, ["ddpm", "dps"], [1, 4], "float32", steps=2,
        repeats=2, log=lambda line: None,
    )  # fmt: skip
    compiles = [e for e in events if e.startswith("COMPILE")]
    assert compiles == ["COMPILE ddpm b1", "COMPILE dps b1", "COMPILE ddpm b4", "COMPILE dps b4"]
    timed = events[events.index("CALL dps b4") + 1 :]  # after the last warm-up
    assert timed == ["CALL ddpm b1", "CALL dps b1", "CALL ddpm b4", "CALL dps b4"] * 2
    assert [(r["sampler"], r["batch"]) for r in out] == [
        ("ddpm", 1), ("dps", 1), ("ddpm", 4), ("dps", 4)
    ]  # fmt: skip
    assert out[2]["images_per_second"] > 0 and out[2]["seconds_per_nfe"] >= 0


def test_hlo_ops_map_to_phase_kind_and_module():
    hlo = (
        '  %fusion.3 = f32[1,8]{1,0} fusion(%p), kind=kLoop, metadata={op_name="jit(vjp)/'
        'transpose(jvp(ADMUNet))/ResBlock_2/conv_general_dilated"}\n'
        "  ROOT %add = f32[1]{0} add(%a, %b)\n"
    )
    index = profiling.hlo_index(hlo)
    assert index["add"] == ("f32[1]{0}", "add", "")
    op_name = index["fusion.3"][2]
    assert profiling.classify("fusion.3", op_name) == (
        "bwd",
        "loop:conv_general_dilated",
        "ResBlock",
    )
    assert profiling.classify("ynn_7", op_name)[1] == "conv"


def test_custom_vjp_switch_is_restored():
    before = fused.USE_CUSTOM_VJP
    with pytest.raises(RuntimeError), profiling.custom_vjp(not before):
        assert fused.USE_CUSTOM_VJP is (not before)
        raise RuntimeError
    assert fused.USE_CUSTOM_VJP is before


def test_particle_methods_report_their_particle_count():
    """NFE and memory per image scale with the particles: the rows name the count."""
    assert benchmark.particles_of("ddpm") is None
    assert benchmark.particles_of("tds") == 16 and benchmark.particles_of("mcg_diff") == 64
    row = {"sampler": "tds", "batch": 1, "dtype": "float32", "compile_seconds": 1.0, "nfe": 32}
    row.update(seconds_per_nfe=1e-3, seconds_per_nfe_median=1e-3, images_per_second=1.0)
    row.update(compiled_temp_bytes_per_image=2**20, num_particles=16)
    assert "(16 particles)" in benchmark.result_line(row)
