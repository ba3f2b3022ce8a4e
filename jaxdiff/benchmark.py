"""Time each sampler per network evaluation, compile separate (scripts/benchmark.py).

Per (arch, dtype) every (batch size, method) is compiled first, then the calls are interleaved
(`repeats` rounds of one call each) and the minimum is reported beside the median: on a shared
machine the other jobs' load, and a machine's drift in speed over minutes, hit every method and
batch size alike, and the minimum is the least disturbed. Per method:
compile seconds, seconds per call / per image / per NFE, images/s, XLA's compiled temporary memory
per image for each block-rematerialisation mode asked for (`remat`: models/remat.py), whether the
hand-written VJPs were traced (`custom_vjp`: models/fused.py), for the particle methods the number
of particles per image (their factory's default: NFE and memory per image scale with it) and the
temporary memory per particle, peak device memory where the backend reports it, and the model
FLOPs per NFE from XLA's cost analysis (a forward; a forward plus its VJP for gradient methods).
`ratios` give each method's seconds per NFE over DDPM's from the same run (DPS / DDPM is the
gradient's overhead; docs/performance.md).
"""

from __future__ import annotations

import inspect
import pathlib
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import xla_options
from jaxdiff.diffusion import schedule_from_meta
from jaxdiff.models import build_model, fused, load_pretrained, model_fn, param_count
from jaxdiff.operators import get_noise, get_operator
from jaxdiff.samplers import SAMPLERS, batched, get_sampler

DEMO_PRIOR = pathlib.Path(__file__).parent / "assets" / "demo_prior"
# The fixture-sized ADM (tests/fixtures/adm_tiny.json kwargs): small enough for any CPU.
TINY = {
    "image_size": 32,
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 6,
    "num_res_blocks": 1,
    "attention_resolutions": (2, 4),
    "dropout": 0.0,
    "channel_mult": (1, 2, 2),
    "conv_resample": True,
    "num_classes": None,
    "num_heads": 1,
    "num_head_channels": 16,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_new_attention_order": False,
}
LINEAR_1000 = {
    "num_timesteps": 1000,
    "beta_schedule": "linear",
    "variance_type": "learned_range",
    "schedule_dtype": "float64",
}


def random_adm(config: dict):
    """(model, params) of an ADM with random weights: timings need no checkpoint."""
    model = build_model("adm", config)
    size = config["image_size"]
    x = jnp.zeros((1, size, size, config["in_channels"]), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32))
    return model, params["params"]


def preset_config(name: str, size: int | None = None) -> dict:
    """`tiny` or a jaxdiff.convert.presets preset, at `size` if given (the ADM is
    resolution-agnostic: its parameters do not depend on the image size)."""
    if name == "tiny":
        config = dict(TINY)
    else:
        from jaxdiff.convert.presets import PRESETS

        config = dict(PRESETS[name])
    return config if size is None else {**config, "image_size": size}


def load_arch(name: str):
    """(arch, model_config, diffusion, params) with random weights for the named presets."""
    if name in ("tiny", "ffhq256", "imagenet256_uncond"):
        config = preset_config(name)
        return "adm", config, dict(LINEAR_1000), random_adm(config)[1]
    _, params, meta = load_pretrained(DEMO_PRIOR if name == "demo" else name)
    return meta["architecture"], meta["model_config"], meta["diffusion"], params


def task_for(size: int):
    """A box-inpainting task at the model's size (a quarter-area hole): cheap, linear (with an SVD
    form), official noise. The operator's cost is negligible next to the UNet's."""
    side = size // 2
    op = get_operator(
        "inpaint_box",
        image_shape=(size, size, 3),
        mask_len_range=(side, side + 1),
        margin=(size // 16, size // 16),
    )
    return op, get_noise("gaussian", sigma=0.05)


def network_flops(model, params, size: int, with_grad: bool) -> float | None:
    """XLA's FLOP count for one image's network work in one NFE (a forward, or forward + VJP)."""
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    t = jnp.full((1,), 500, jnp.int32)

    def fwd(p, x):
        return model.apply({"params": p}, x, t)

    fn = (lambda p, x: jax.grad(lambda x: jnp.sum(fwd(p, x)))(x)) if with_grad else fwd
    try:
        cost = xla_options.compile_lowered(jax.jit(fn).lower(params, x)).cost_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement cost analysis
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost.get("flops", 0.0)) or None


def peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def temp_bytes(compiled) -> int | None:
    return getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)


def particles_of(name: str) -> int | None:
    """The default particle count of a particle method's factory (None for the others)."""
    param = inspect.signature(SAMPLERS.get(name).make).parameters.get("num_particles")
    return None if param is None else int(param.default)


def nfe_of(name: str, num_steps: int, options: dict) -> int:
    """Network evaluations per image, as the registry entry declares them."""
    return SAMPLERS.get(name).num_evaluations(num_steps, options)


def image_size(config: dict) -> int:
    return int(config.get("image_size", config.get("sample_size")))


def compile_method(
    arch, config, diffusion, params, name, batch, dtype, steps, remat="none", **options
):
    """(compiled, args, schedule, model) of one method's batched sample function on task_for's
    task, `steps` respaced steps; traced now, so module-level switches (fused.USE_CUSTOM_VJP)
    read at this call are the ones compiled in."""
    size = image_size(config)
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    model = build_model(arch, config, dtype=compute, remat=remat)
    op, noise = task_for(size)
    schedule = schedule_from_meta(diffusion, respacing=str(steps))
    make = get_sampler(name)
    sample = make(
        model_fn(model), schedule, operator=op, noise=noise, image_shape=(size, size, 3), **options
    )
    keys = jax.random.split(jax.random.PRNGKey(0), batch)
    x = jnp.zeros((batch, size, size, 3), jnp.float32)
    op_params = jax.vmap(op.sample)(keys)
    y = jax.vmap(op.apply)(op_params, x)
    args = (params, keys, y, op_params, {})
    compiled = xla_options.compile_lowered(jax.jit(batched(sample)).lower(*args))
    return compiled, args, schedule, model


def bench_group(
    arch, config, diffusion, params, names, batches: Sequence[int], dtype: str, *, steps: int,
    repeats: int, remat_modes: Sequence[str] = ("none",),
    log: Callable[[str], None] = lambda line: None,
) -> list[dict]:  # fmt: skip
    """Compile every (batch size, method, remat mode), then time them all interleaved (see the
    module docstring: batch sizes too, so the per-image ratios between them do not carry the
    machine's drift between groups); `log` gets a line as each compile starts and ends and as
    each timed round starts."""
    size = image_size(config)
    entries = []
    runs = [(b, n, m) for b in batches for n in names for m in remat_modes]
    for i, (batch, name, mode) in enumerate(runs):
        batch = int(batch)
        r = {"arch": arch, "image_size": size, "sampler": name, "batch": batch, "dtype": dtype}
        r.update(remat=mode, custom_vjp=fused.custom_vjp_enabled())
        r.update(library_fusions=xla_options.library_fusions_enabled())
        name_at = f"  [{i + 1}/{len(runs)}] {name}" + ("" if mode == "none" else f" remat={mode}")
        log(f"{name_at} b={batch} {dtype}: compiling ...")
        try:
            t0 = time.perf_counter()
            compiled, args, schedule, model = compile_method(
                arch, config, diffusion, params, name, batch, dtype, steps, remat=mode
            )
            r["compile_seconds"] = round(time.perf_counter() - t0, 3)
            jax.block_until_ready(compiled(*args))  # warm-up
        except Exception as err:  # noqa: BLE001 - one method's failure must not end the run
            r["error"] = f"{type(err).__name__}: {err}"
            r["traceback"] = traceback.format_exc()  # in the JSON; one line on the console
            log(f"{name_at}: failed ({r['error'].splitlines()[0]})")
            entries.append((r, None, None))
            continue
        log(f"{name_at}: compiled in {r['compile_seconds']:.1f} s")
        spec = SAMPLERS.get(name)
        r["nfe"] = nfe_of(name, schedule.num_steps, {})
        r["grad"] = bool(getattr(spec, "grad", False))
        r["compiled_temp_bytes"] = temp_bytes(compiled)
        r["compiled_temp_bytes_per_image"] = (r["compiled_temp_bytes"] or 0) // batch or None
        particles = particles_of(name)
        if particles:
            r["num_particles"] = particles
            r["compiled_temp_bytes_per_particle"] = (
                r["compiled_temp_bytes_per_image"] or 0
            ) // particles or None
        r["network_flops_per_nfe"] = network_flops(model, params, size, with_grad=r["grad"])
        entries.append((r, compiled, args))
    times = {id(r): [] for r, c, _ in entries if c is not None}
    for k in range(repeats):
        if times:
            log(f"  timing round {k + 1}/{repeats} of {len(times)} program(s) ...")
        for r, compiled, args in entries:
            if compiled is None:
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times[id(r)].append(time.perf_counter() - t0)
    out = []
    for r, compiled, _ in entries:
        if compiled is not None:
            ts = times[id(r)]
            best, med = float(min(ts)), float(np.median(ts))
            per_image = r["nfe"] * r["batch"]
            r.update(
                seconds_per_call=best,
                seconds_per_call_median=med,
                seconds_per_call_all=[round(t, 4) for t in ts],
                seconds_per_nfe=best / per_image,
                seconds_per_nfe_median=med / per_image,
                images_per_second=r["batch"] / best,
                peak_device_bytes=peak_memory(),
            )
            if r["network_flops_per_nfe"]:
                r["achieved_flops_per_second"] = r["network_flops_per_nfe"] / r["seconds_per_nfe"]
        out.append(r)
    return out


def ratios(results: list[dict]) -> list[dict]:
    """Each method's seconds per NFE over DDPM's in the same (model, batch, dtype, remat)
    group."""
    rows = []
    for base in results:
        if base["sampler"] != "ddpm" or "seconds_per_nfe" not in base:
            continue
        for r in results:
            same = all(r.get(k) == base.get(k) for k in ("model", "batch", "dtype", "remat"))
            if not same or r is base or "seconds_per_nfe" not in r:
                continue
            rows.append(
                {
                    "model": r["model"],
                    "batch": r["batch"],
                    "dtype": r["dtype"],
                    "remat": r.get("remat", "none"),
                    "sampler": r["sampler"],
                    "seconds_per_nfe": r["seconds_per_nfe"],
                    "ddpm_seconds_per_nfe": base["seconds_per_nfe"],
                    "ratio_to_ddpm": r["seconds_per_nfe"] / base["seconds_per_nfe"],
                    "ratio_to_ddpm_median": r["seconds_per_nfe_median"]
                    / base["seconds_per_nfe_median"],
                }
            )
    return rows


def remat_ratios(results: list[dict]) -> list[dict]:
    """Each rematerialised run against the same method without remat (same model, batch,
    dtype): step time and compiled temporary memory per image, both as ratios."""
    rows = []
    for r in results:
        if r.get("remat", "none") == "none" or "seconds_per_call" not in r:
            continue
        for base in results:
            keys = ("model", "batch", "dtype", "sampler")
            if base.get("remat") != "none" or any(base.get(k) != r.get(k) for k in keys):
                continue
            if "seconds_per_call" not in base:
                continue
            mem, mem0 = (
                r.get("compiled_temp_bytes_per_image"),
                base.get("compiled_temp_bytes_per_image"),
            )
            rows.append(
                {
                    **{k: r[k] for k in keys},
                    "remat": r["remat"],
                    "time_ratio": r["seconds_per_call"] / base["seconds_per_call"],
                    "time_ratio_median": r["seconds_per_call_median"]
                    / base["seconds_per_call_median"],
                    "temp_bytes_per_image": mem,
                    "temp_bytes_per_image_none": mem0,
                    "memory_ratio": mem / mem0 if mem and mem0 else None,
                }
            )
    return rows


def batch_ratios(results: list[dict]) -> list[dict]:
    """Each run at batch > 1 against the same method, dtype and remat at batch 1: seconds per NFE
    per image and compiled temporary memory per image, as ratios (1.0: per-image cost flat)."""
    keys = ("model", "dtype", "sampler", "remat")
    rows = []
    for r in results:
        for base in results:
            if r.get("batch", 1) <= 1 or base.get("batch") != 1 or "seconds_per_nfe" not in r:
                continue
            if any(base.get(k) != r.get(k) for k in keys) or "seconds_per_nfe" not in base:
                continue
            mem, mem1 = (
                r.get("compiled_temp_bytes_per_image"),
                base.get("compiled_temp_bytes_per_image"),
            )
            rows.append(
                {
                    **{k: r.get(k) for k in keys},
                    "batch": r["batch"],
                    "time_per_image_ratio": r["seconds_per_nfe"] / base["seconds_per_nfe"],
                    "time_per_image_ratio_median": r["seconds_per_nfe_median"]
                    / base["seconds_per_nfe_median"],
                    "memory_per_image_ratio": mem / mem1 if mem and mem1 else None,
                }
            )
    return rows


def _fusions(run: dict) -> str:
    """on / off / mixed: whether the results were compiled with XLA's library fusions."""
    seen = {r.get("library_fusions") for r in run["results"]} - {None}
    return "mixed" if len(seen) > 1 else ("on" if seen == {True} else "off" if seen else "unknown")


def markdown_table(run: dict) -> str:
    """A benchmark JSON as the markdown table of docs/performance.md: one row per result."""
    dev = run["device"]
    head = (
        f"Device: {dev['kind']} ({dev['platform']}, {dev['count']} device(s)); "
        f"jax {run['versions']['jax']}; XLA library fusions {_fusions(run)}.\n\n"
        "| model | method | batch | dtype | custom VJP | remat | compile s | ms / NFE / image "
        "| images / s | temp MiB / image | particles | peak MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in run["results"]:
        common = (
            f"| {r.get('model', r['arch'])} | {r['sampler']} | {r['batch']} | {r['dtype']} "
            f"| {'on' if r.get('custom_vjp') else 'off'} | {r.get('remat', 'none')} "
        )
        if "error" in r:
            rows.append(common + f"| failed: {r['error'].splitlines()[0][:80]} ||||||")
            continue
        mem, peak = r.get("compiled_temp_bytes_per_image"), r.get("peak_device_bytes")
        mem_text = f"{mem / 2**20:.0f}" if mem else ""
        peak_text = f"{peak / 2**20:.0f}" if peak else ""
        rows.append(
            common + f"| {r['compile_seconds']:.1f} | {r['seconds_per_nfe'] * 1e3:.2f} "
            f"| {r['images_per_second']:.3f} | {mem_text} | {r.get('num_particles', '')} "
            f"| {peak_text} |"
        )
    return head + "\n".join(rows) + "\n"


def result_line(r: dict) -> str:
    """One method's figures on one line (the progress the benchmark prints)."""
    remat = r.get("remat", "none")
    head = f"  {r['sampler']:9s} b={r['batch']:<3d} {r['dtype']:8s} remat={remat:6s}"
    if "error" in r:
        return f"{head} {r['error']}"
    mem = r.get("compiled_temp_bytes_per_image")
    mem_text = f"  temp {mem / 2**20:7.0f} MiB/img" if mem else ""
    if r.get("num_particles"):
        mem_text += f" ({r['num_particles']} particles)"
    return (
        f"{head} compile {r['compile_seconds']:6.1f}s  NFE {r['nfe']:4d}{mem_text}"
        f"  {r['seconds_per_nfe'] * 1e3:9.1f} ms/NFE/img"
        f" (median {r['seconds_per_nfe_median'] * 1e3:9.1f})"
        f"  {r['images_per_second']:8.3f} img/s"
    )


def run_benchmark(
    archs: Sequence[str],
    samplers: Sequence[str] | None,
    batches: Sequence[int],
    dtypes: Sequence[str],
    steps: int,
    repeats: int,
    remat_modes: Sequence[str] = ("none",),
    log: Callable[[str], None] = print,
) -> dict:
    """Every (arch, dtype, batch) group of `samplers` (default: every registered one) in each
    of `remat_modes`, each result `log`ged as it comes; the JSON's content: device, host,
    versions, results, ratios (to DDPM), remat_ratios (to remat none), batch_ratios (to
    batch 1)."""
    import flax
    import jaxlib

    from jaxdiff.models.remat import check_remat

    # the latent methods need a latent prior: their step is in latent_benchmark.py
    pixel = [n for n in SAMPLERS.names() if "latent_prior" not in SAMPLERS.get(n).needs]
    names = list(samplers or pixel)
    unknown = [n for n in names if n not in SAMPLERS]
    if unknown:
        raise KeyError(f"unknown sampler(s) {unknown}; known: {SAMPLERS.names()}")
    remat_modes = [check_remat(m) for m in remat_modes]
    results = []
    for name in archs:
        arch, config, diffusion, params = load_arch(name)
        log(f"{name}: {arch}, {param_count(params):,} parameters")
        for dtype in dtypes:
            group = bench_group(
                arch, config, diffusion, params, names, batches, dtype, steps=steps,
                repeats=repeats, remat_modes=remat_modes, log=log,
            )  # fmt: skip
            for r in group:
                r["model"] = name
                results.append(r)
                log(result_line(r))
    dev = jax.devices()[0]
    return {
        "device": {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count()},
        "host": {"machine": platform.machine(), "python": sys.version.split()[0]},
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "flax": flax.__version__,
        },
        "steps": steps,
        "repeats": repeats,
        "results": results,
        "ratios": ratios(results),
        "remat_ratios": remat_ratios(results),
        "batch_ratios": batch_ratios(results),
    }
