"""The main job on the bundled demo prior: every method on every demo task, one table (the
library of scripts/demo.py).

Runs unconditional DDPM samples of the prior and every pixel-space method (plus the classical
baselines and the measurement itself, the floor) on box inpainting and Gaussian deblurring of the
prior's held-out photos; `--config.tasks=box,random,gaussian_blur,sr2` adds random inpainting
and 2x super-resolution (settings: configs/demo.py).
Each (method, task) is an ordinary driver run in workdir/METHOD_TASK (one compile, resumable),
so `python -m scripts.table` works on them too. Writes workdir/table.{md,csv,png},
workdir/grid_TASK.png and workdir/ddpm_samples.png.

The method and baseline configs are the config files METHOD.py and baselines.py
(jaxdiff.config_lib.config_path), loaded by path like the demo config itself.
"""

from __future__ import annotations

import contextlib
import pathlib
import signal
import time

import jax
import numpy as np

from jaxdiff import config_lib, xla_options
from jaxdiff.baselines import APPLIES


def _split(s: str) -> list[str]:
    return [p.strip() for p in str(s).split(",") if p.strip()]


def respacing(demo, task: str, method: str | None = None) -> str:
    """A diffusion method's respacing on `task`: demo.method_respacing[method], else
    demo.task_respacing[task], else demo.respacing."""
    if method is not None and method in demo.get("method_respacing", {}):
        return str(demo.method_respacing[method])
    return str(demo.task_respacing.get(task, demo.respacing))


def run_config(demo, method: str, task: str):
    """The driver config of one (method, task) run of the demo."""
    from jaxdiff.samplers import SAMPLERS

    if method in SAMPLERS:
        c = config_lib.config_module(method).get_config(task)
        c.sampler.respacing = respacing(demo, task, method)
    else:
        c = config_lib.config_module("baselines").get_config(f"{method},{task}")
    overrides = dict(demo.task_overrides.get(task, {}))
    if overrides:
        c.task.doc = f"{c.task.doc} (demo override at 32 px: {overrides})"
    for key, value in overrides.items():
        if key == "reference_size":
            c.task.reference_size = int(value)
        else:
            c.task.operator_config[key] = value
    c.model, c.data = demo.model, demo.data
    c.num_images, c.seed, c.batch_size = demo.num_images, demo.seed, demo.batch_size
    if method in SAMPLERS:
        bounds = SAMPLERS.get(method).bounds
        for name, per_task in demo.hparams.get(method, {}).items():
            if task in per_task:
                c.sampler.hparams[name] = float(per_task[task])
                if name in bounds:  # a static scan bound that must cover the traced value
                    c.sampler.options[bounds[name]] = float(per_task[task])
        for name, per_task in demo.get("options", {}).get(method, {}).items():
            if task in per_task:
                c.sampler.options[name] = per_task[task]
    return c


def plan(demo) -> list[tuple[str, str]]:
    """(method, task) pairs: each diffusion method on every task (or on demo.method_tasks'
    subset), each baseline where it applies; the diffusion runs first (the long ones)."""
    from jaxdiff.samplers import SAMPLERS
    from jaxdiff.tasks import TASKS

    pairs, baselines = [], []
    only = demo.get("method_tasks", {})
    for m in _split(demo.methods):
        if m not in SAMPLERS and m not in APPLIES:
            raise KeyError(f"demo.methods: unknown method {m!r}; known: {SAMPLERS.names()}")
        typos = [t for t in _split(only.get(m, "")) if t not in TASKS]
        if typos:
            raise KeyError(
                f"demo.method_tasks.{m}: unknown task(s) {typos}; known: {', '.join(TASKS)}"
            )
    for task in _split(demo.tasks):
        pairs += [(m, task) for m in _split(demo.methods) if task in _split(only.get(m, task))]
        for b in _split(demo.baselines):
            if b not in APPLIES:
                raise KeyError(f"demo.baselines: unknown baseline {b!r}; known: {list(APPLIES)}")
            if task in APPLIES[b]:
                baselines.append((b, task))
    return pairs + baselines


DDPM_PNG = "ddpm_samples.png"


def ddpm_samples(demo, loaded, path, n: int) -> None:
    """n unconditional samples of the prior (keys fold_in(PRNGKey(seed), i)) as one image."""
    from jaxdiff import data as jdata
    from jaxdiff.diffusion import schedule_from_meta
    from jaxdiff.experiment import model_image_size
    from jaxdiff.models import model_fn
    from jaxdiff.runner import image_keys
    from jaxdiff.samplers import batched, get_sampler
    from jaxdiff.sharding import EXECUTION
    from jaxdiff.summary import upscale

    _, model, params, meta = loaded
    size = model_image_size(meta)
    sched = schedule_from_meta(meta["diffusion"], demo.respacing or None)
    sample = get_sampler("ddpm")(model_fn(model), sched, image_shape=(size, size, 3))
    keys = image_keys(demo.seed, range(n))
    run = jax.jit(batched(sample)).lower(params, keys)
    run = run.compile(compiler_options=xla_options.compiler_options())
    with EXECUTION:  # one program at a time in this process (see EXECUTION)
        out = jax.block_until_ready(run(params, keys))
    x = np.asarray(out.x0)
    cols = min(n, 8)
    grid = jdata.make_grid([list(x[i : i + cols]) for i in range(0, n, cols)])
    jdata.save_png(path, upscale(grid, 128))


# What the demo is meant to show: (better, worse, tasks) means `better` beats `worse` on
# PSNR and LPIPS on each of `tasks`; "measurement" is the measurement itself, the floor.
CLAIMS = (
    ("dps", "sdedit", ("box", "gaussian_blur")),
    *((m, "measurement", None) for m in ("sdedit", "score_ald", "dps")),  # None: every task
)


def check_claims(csv_path) -> list[tuple[str, bool]]:
    """Each claim of CLAIMS that the table can test, as (sentence with the numbers, holds)."""
    import csv

    mean = {}
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            if row["mean"]:  # empty where no image of the run gave a value (all diverged)
                mean[row["method"], row["task"], row["metric"]] = float(row["mean"])
    out = []
    for better, worse, tasks in CLAIMS:
        for task in tasks or sorted({t for m, t, _ in mean if m == better}):
            try:
                b = [mean[better, task, m] for m in ("psnr", "lpips")]
                w = [mean[worse, task, m] for m in ("psnr", "lpips")]
            except KeyError:
                continue  # not run (a smaller demo)
            holds = b[0] > w[0] and b[1] < w[1]
            text = (
                f"{better} beats {worse} on {task}: PSNR {b[0]:.2f} vs {w[0]:.2f} dB, "
                f"LPIPS {b[1]:.3f} vs {w[1]:.3f}"
            )
            out.append((text, holds))
    return out


def run_demo(demo, workdir, progress: bool = True) -> dict:
    """Every run of the demo, then the table; returns {"table": paths, "claims": check_claims(),
    "seconds": wall}."""
    from jaxdiff import runs

    t0 = time.perf_counter()
    workdir = pathlib.Path(workdir)
    pairs = plan(demo)
    # every run's config, so that a bad name or setting in any of them is found before the first
    # write (not after the runs before it, in a folder then claimed by it)
    configs = {pair: run_config(demo, *pair) for pair in pairs}
    for cfg in configs.values():
        runs.validate_config(cfg)
    level = xla_options.check_optimization_level(demo.get("xla_backend_optimization_level"))
    workers = max(1, int(demo.get("workers", 1)))
    # worker processes on the CPU only: an accelerator is one process's (a TPU opens in one, and
    # each process would preallocate most of a GPU's memory). They start now, so that their
    # imports and model loading overlap this process's set-up below.
    if workers == 1 or jax.default_backend() != "cpu":
        with xla_options.backend_optimization_level(level):
            return _run_demo(demo, workdir, configs, None, progress, t0)
    with _worker_pool(workers, demo, level) as pool:
        return _run_demo(demo, workdir, configs, pool, progress, t0)


def _run_demo(demo, workdir, configs, pool, progress, t0) -> dict:
    """run_demo after the checks: the jobs in this process (`pool` None) or on `pool`."""
    from jaxdiff.experiment import build, resolve_model_dir
    from jaxdiff.images import load_images
    from jaxdiff.models import load_pretrained
    from jaxdiff.report import make_table
    from jaxdiff.workdir import claim, config_dict

    model_dir = resolve_model_dir(demo.model)
    loaded = (model_dir, *load_pretrained(model_dir))
    pairs = list(configs)
    exps = {pair: build(cfg, loaded=loaded) for pair, cfg in configs.items()}
    first = exps[pairs[0]]
    images = load_images(demo.data, first.image_size, demo.num_images, first.meta)
    claim(workdir, "demo", config_dict(demo))  # the config checked, before the first write

    # the longest runs first, so that the last to finish are short ones (results do not depend
    # on the order: each run has its own keys)
    pairs = sorted(pairs, key=lambda pair: -_cost(pair, exps[pair]))
    jobs = [("run", pair, workdir / "_".join(pair)) for pair in pairs]
    if demo.ddpm_samples:  # the prior's samples, beside the first runs
        jobs.insert(0, ("ddpm", workdir / DDPM_PNG, int(demo.ddpm_samples)))
    if pool is None:
        do = _Jobs(demo, progress, loaded=loaded, exps=exps)
        for job in jobs:
            do(job, images)
    else:
        _in_processes(pool, jobs, images, progress)
    written = make_table([workdir], out=workdir)
    return {
        "table": written,
        "claims": check_claims(written["csv"]),
        "seconds": time.perf_counter() - t0,
    }


def _cost(pair, exp) -> float:
    """A run's rough cost in network calls, for ordering the runs: the compilation counts as
    100 calls (170 with a gradient), a call through the network's gradient as 3.3 (the demo
    prior on 2 cores); a classical baseline as 0."""
    from jaxdiff.diffusion import schedule_from_meta
    from jaxdiff.samplers import SAMPLERS

    if pair[0] not in SAMPLERS:
        return 0.0
    spec = SAMPLERS.get(pair[0])
    config = exp.config.sampler
    steps = schedule_from_meta(exp.meta["diffusion"], config.respacing).num_steps
    calls = spec.num_evaluations(steps, dict(config.options))
    return 170 + 3.3 * calls if spec.grad else 100 + calls


class _Jobs:
    """Runs the demo's jobs: ("run", (method, task), run_dir) or ("ddpm", png_path, n), each on
    the demo's images."""

    def __init__(self, demo, progress, loaded=None, exps=None):
        from jaxdiff.experiment import resolve_model_dir
        from jaxdiff.models import load_pretrained

        if loaded is None:
            model_dir = resolve_model_dir(demo.model)
            loaded = (model_dir, *load_pretrained(model_dir))
        self.demo, self.progress, self.loaded = demo, progress, loaded
        self.exps = exps or {}

    def __call__(self, job, images) -> str:
        from jaxdiff import runs
        from jaxdiff.experiment import build

        kind, what, *rest = job
        if kind == "ddpm":
            ddpm_samples(self.demo, self.loaded, what, *rest)
            return pathlib.Path(what).name
        exp = self.exps.get(what) or build(run_config(self.demo, *what), loaded=self.loaded)
        runs.run(exp.config, rest[0], exp=exp, images=images, progress=self.progress)
        return pathlib.Path(rest[0]).name


# Worker processes, not threads: XLA:CPU programs executing at the same time in one process
# changed each other's float results (sharding.EXECUTION), while programs in separate processes
# do not; so each worker process runs one job at a time, and the processes overlap one run's
# compilation and execution with another's (thread workers behind the lock: 439 s for the demo).
_WORKER: dict = {}


def _start_worker(demo_dict, settings) -> None:
    """A worker process's set-up: the parent's JAX settings, then the demo's model, once."""
    import threading

    import ml_collections
    from tqdm import tqdm

    from jaxdiff import compile_cache

    cache_dir, threefry, level = settings
    # Ctrl-C is the parent's: it stops the workers (a worker's own KeyboardInterrupt would fail
    # its job and go on to the next one queued)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing semaphore; a worker stopped by the parent would
    # leave it registered, and multiprocessing's resource tracker warns about it after the
    # parent's last line. A worker's bars are its own: a thread lock does.
    tqdm.set_lock(threading.RLock())
    compile_cache.enable(cache_dir or "off")
    if threefry:
        xla_options.straight_line_threefry()
    xla_options.BACKEND_OPTIMIZATION_LEVEL = level  # the process's whole life
    _WORKER["jobs"] = _Jobs(ml_collections.ConfigDict(demo_dict), progress=False)


def _ready() -> None:
    """A no-op job: submitting one per worker starts the processes (the pool starts them on
    demand)."""


def _job_in_worker(job, images) -> str:
    return _WORKER["jobs"](job, images)


@contextlib.contextmanager
def _worker_pool(workers, demo, level):
    """`workers` spawned processes, started at once. On an error or Ctrl-C the jobs not started
    are cancelled and the workers stopped at once (finished runs are kept; an interrupted run
    resumes with the same command)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    settings = (jax.config.jax_compilation_cache_dir, xla_options.THREEFRY_LOWERED, level)
    ctx = multiprocessing.get_context("spawn")  # a fork would copy JAX's threads and locks
    init = (demo.to_dict(), settings)
    with ProcessPoolExecutor(workers, ctx, initializer=_start_worker, initargs=init) as pool:
        for _ in range(workers):
            pool.submit(_ready)
        try:
            yield pool
        except BaseException:
            # the runs under way stop now, not at their end, and those not started stay so (the
            # pool's own processes: Python 3.14's `terminate_workers` does the same)
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _in_processes(pool, jobs, images, progress) -> None:
    """`jobs` on the worker `pool` (each job's own results; a job's error is raised here); a
    bar over the jobs where `progress`."""
    from concurrent.futures import as_completed

    from tqdm import tqdm

    futures = [pool.submit(_job_in_worker, job, images) for job in jobs]
    with tqdm(total=len(jobs), desc="demo runs", disable=not progress) as bar:
        for future in as_completed(futures):
            bar.set_postfix_str(future.result(), refresh=False)
            bar.update()


def describe(result: dict, demo, workdir) -> str:
    """What the demo printed at the end: the table, each claim, where the files are."""
    w = result["table"]
    lines = [pathlib.Path(w["md"]).read_text()]
    lines += [f"{'yes' if holds else 'NO '}  {text}" for text, holds in result["claims"]]
    steps = ", ".join(f"{respacing(demo, t)} on {t}" for t in _split(demo.tasks))
    if demo.method_respacing:
        steps += "; " + ", ".join(f"{r} for {m}" for m, r in demo.method_respacing.items())
    lines.append(
        f"demo finished in {result['seconds']:.0f} s ({jax.device_count()} device(s)); "
        f"respaced steps of the diffusion methods: {steps} (configs/demo.py)."
    )
    lines.append(f"table: {w['md']} (also {w['csv'].name}, {w['png'].name})")
    grids = [str(p) for k, p in w.items() if k.startswith("grid_")]
    lines.append(f"figures: {', '.join(grids)}")
    lines.append(f"prior samples: {pathlib.Path(workdir) / DDPM_PNG}")
    lines.append(f"per-run results: {workdir}/METHOD_TASK/ (summary.md, results.jsonl, images/)")
    return "\n".join(lines)
