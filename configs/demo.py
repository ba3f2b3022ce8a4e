"""The demo (`python -m scripts.demo --workdir=runs/demo`): every pixel-space method with the
bundled demo prior (32x32 ADM trained on scikit-image's and matplotlib's photos,
configs/train_demo.py) on its three held-out photos, box inpainting and Gaussian deblurring
(TASKS): SDEdit and DPS on both, every other method on one (METHOD_TASKS); about 5 minutes on a
2-core CPU. `--config.tasks=box,random,gaussian_blur,sr2` adds random inpainting and 2x
super-resolution (DPS, Score-ALD on sr2, the classical baselines; about a minute more).

Differences from the paper presets (configs/<method>.py), all for CPU time or for 32 px:
- 50 respaced steps (`respacing`) instead of 1000 for every diffusion method, 100 on box
  inpainting (`task_respacing`, below), in guided-diffusion section spacing over the 1000
  training steps;
- the task lengths are scaled to 32 px (jaxdiff.experiment.scale_task: a 16x16 box with a 2 px
  margin), except the Gaussian blur (TASK_OVERRIDES below);
- super-resolution x2 (`sr2`) instead of x4: at 32 px, x4 leaves an 8x8 measurement;
- hyperparameters tuned for this prior on the held-out photos (below).
"""

from __future__ import annotations

import ml_collections

from jaxdiff import config_lib

# The default tasks: the two that every method of the demo runs on (METHOD_TASKS). ALL_TASKS are
# the ones tuned below; random inpainting and sr2 add DPS, Score-ALD and 7 baseline runs (the
# demo 344 s instead of 280-304 s on 2 cores).
TASKS = "box,gaussian_blur"
ALL_TASKS = "box,random,gaussian_blur,sr2"
METHODS = (
    "sdedit,score_ald,dps,ddrm,ddnm,pigdm,diffpir,reddiff,daps,dmps,mpgd,repaint,mcg,dsg,pnpdm,"
    "mcg_diff,fps_smc,mmps,tmpd,tds"
)
# Classical baselines: each runs on the tasks it applies to (jaxdiff.baselines.APPLIES).
BASELINES = "measurement,telea,wiener,bicubic,tv_least_squares"

# Box inpainting generates a quarter of the image from the prior alone, and DPS needs the longer
# chain there: at 50 steps DPS and SDEdit split the metrics on the held-out photos (DPS scale 4:
# 18.74 dB / LPIPS 0.210, SDEdit t0 0.5: 18.36 / 0.194); at 100 steps DPS gains on both while
# SDEdit does not (below). Every diffusion method runs box at 100 steps, re-swept there; the other tasks
# stay at 50 (doubling them costs ~70 s of CPU and changes no conclusion).
TASK_RESPACING = {"box": "100"}

# One rule for every method: the value with the best mean LPIPS-VGG on the three held-out photos,
# seed 0 (scripts.sweep on scripts.demo.run_config(...); 3 images: sensible settings for the demo,
# not statistically tuned values). Sweeps on the v1 prior (PSNR / LPIPS):
# DPS scale: at 50 steps the guidance acts 20x less often than at 1000, so the best scales are
# ~10x the official 0.3-0.5. box (100 steps) 1.5 / 2 / 2.5 / 3: 18.91/0.204, 18.99/0.171,
# 18.94/0.176, 18.49/0.182; sr2 4 / 8 / 12: 21.22/0.269, 21.89/0.216, 21.34/0.232; random and
# blur keep the v0 prior's 8 (16 saturates).
DPS_SCALE = {"box": 2.0, "random": 8.0, "gaussian_blur": 8.0, "sr4": 8.0, "sr2": 8.0}
# Score-ALD weight (with the beta_t/sqrt(alpha_t) step, configs/score_ald.py): box (100 steps)
# 0.25 / 0.5 / 0.7 / 0.85 / 1 / 1.5 / 2: 18.21/0.267, 18.43/0.197, 18.43/0.185, 18.41/0.181,
# 18.38/0.179, 18.19/0.185, 17.25/0.260; sr2 1 / 3 / 5: 20.70/0.312, 22.10/0.209, 21.91/0.226;
# random and blur keep 1 (>= 3 diverges there on v0).
SCORE_ALD_WEIGHT = {"box": 1.0, "random": 1.0, "gaussian_blur": 1.0, "sr4": 10.0, "sr2": 3.0}
# SDEdit t0 (the masked variant keeps the measured pixels on inpainting): box (100 steps) 0.3 /
# 0.4 / 0.5 / 0.7: 18.69/0.195, 18.26/0.199, 17.80/0.219, 17.92/0.212; on blur and SR any real
# noise level only hallucinates (blur 0.02 / 0.04 / 0.1: 21.32/0.262, 21.14/0.264, 19.16/0.387;
# sr2 0.02 / 0.05 / 0.1: 21.75/0.234, 20.92/0.263, 19.59/0.346), so t0 = 0.02 (one respaced step)
# mostly denoises.
SDEDIT_T0 = {"box": 0.3, "random": 0.3, "gaussian_blur": 0.02, "sr4": 0.1, "sr2": 0.02}

# MPGD scale at 20 steps (ddim20; the official 17.5 there is for 256 px): box 0.5 / 1 / 2 / 4 / 8:
# 13.01/0.623, 15.35/0.496, 16.97/0.316, 17.06/0.251, 16.84/0.288; sr2 2 / 4 / 6 / 8 / 12 / 17.5:
# 17.07/0.510, 20.74/0.277, 21.16/0.245, 20.98/0.256, 20.68/0.274, 20.31/0.283; gaussian_blur
# 4 / 8 / 12 / 17.5: 21.22/0.251, 21.49/0.233, 20.56/0.249, 19.17/0.245 (eta 0.5).
MPGD_SCALE = {"box": 4.0, "random": 4.0, "gaussian_blur": 8.0, "sr4": 6.0, "sr2": 6.0}
# MCG scale on box (its one demo task), 20 steps (50 steps: 0.5 / 1 / 2 / 4: 18.75/0.198,
# 18.82/0.204, 18.93/0.210, 19.02/0.213); 20 steps 0 / 0.25 / 0.5 / 1 / 2: 18.88/0.182,
# 18.71/0.181, 18.63/0.181, 18.63/0.183, 18.83/0.187 (on these photos the projection does most
# of the work; the gradient adds little):
MCG_SCALE = {"box": 0.5}

# Task settings given directly at 32 px (reference_size 32) where the proportional rule of
# jaxdiff.experiment.scale_task gives a degenerate task: the paper's std 3.0 at 256 px is 0.375 px
# at 32 px, a blur that is invisible under the sigma = 0.05 noise (the measurement itself scores
# ~32 dB). The demo blurs with std 1.0 px in a 9x9 kernel instead (8 px at 256: a strong blur).
TASK_OVERRIDES = {"gaussian_blur": {"reference_size": 32, "kernel_size": 9, "std": 1.0}}

# Every tuned traced hyperparameter: method -> hparam -> task -> value. A hyperparameter whose
# sampler declares a static bound (SDEdit's t0 <= max_t0) sets the bound too (scripts.demo).
# RED-diff keeps its official settings (configs/reddiff.py); see METHOD_RESPACING for its steps.
HPARAMS = {
    "dps": {"scale": DPS_SCALE},
    "score_ald": {"weight": SCORE_ALD_WEIGHT},
    "sdedit": {"t0": SDEDIT_T0},
    "mpgd": {"scale": MPGD_SCALE},
    "mcg": {"scale": MCG_SCALE},
    # DSG at 20 steps: configs/dsg.py's 20-step Table 3 rows (interval 1; rate 0.2 inpainting
    # and SR, 0.1 deblurring), not swept on the demo photos
    "dsg": {
        "interval": {"box": 1.0, "random": 1.0, "gaussian_blur": 1.0, "sr4": 1.0, "sr2": 1.0},
        "guidance_scale": {"box": 0.2, "random": 0.2, "gaussian_blur": 0.1, "sr4": 0.2, "sr2": 0.2},
    },
    # PnP-DM at 10 iterations of 10 EDM steps (100 network calls): rho decays 10 * 0.6^k so that
    # it reaches rho_min 0.3 by the last iteration (the official 0.9 over 100 iterations does);
    # not swept on the demo photos
    "pnpdm": {
        "rho_decay": {"box": 0.6, "random": 0.6, "gaussian_blur": 0.6, "sr4": 0.6, "sr2": 0.6}
    },
}
# Tasks per method where not every one of `tasks`. Each (method, task) run costs its own XLA
# compilation (5-25 s on 2 cores, most of a run's time), so the demo runs SDEdit, Score-ALD and
# DPS on several tasks (the README's claims) and every other method on one: inpainting (box) or
# deblurring (gaussian_blur), about half of them on each, so each task's table compares several
# methods. The other tasks run with --config.method_tasks.<method>=... (measured on the held-out
# photos, 20 steps, PSNR / SSIM / LPIPS: on random inpainting DiffPIR 22.84 / 0.835 / 0.219,
# PiGDM 21.33 / 0.764 / 0.294, DDRM 20.41 / 0.730 / 0.307, DAPS 19.73 / 0.699 / 0.336, RED-diff
# 18.57 / 0.636 / 0.445, all above the measurement's 15.37 / 0.510 / 0.514; on inpainting
# (U = V = I, singular values = the mask) DDNM+ takes DDRM's steps exactly at these settings).
_BOX, _BLUR = "box", "gaussian_blur"
METHOD_TASKS = {
    "dps": ALL_TASKS,  # every task (the README's claims)
    "sdedit": "box,gaussian_blur",  # the DPS-vs-SDEdit claims
    "score_ald": "box,sr2",
    "ddrm": _BOX,
    "pigdm": _BOX,
    "reddiff": _BOX,
    "mpgd": _BOX,
    "repaint": _BOX,  # inpainting only (a pixel-mask operator)
    "mcg": _BOX,  # its exact projection amplifies a blur's noise (A^+ n: std 0.05 -> 30)
    "dsg": _BOX,
    "tds": _BOX,
    "ddnm": _BLUR,
    "diffpir": _BLUR,
    "daps": _BLUR,
    "dmps": _BLUR,
    "pnpdm": _BLUR,
    # the particle samplers (2 particles in the demo, see OPTIONS), measured with 4 (each step a
    # batch of 4 through the network), 3 photos, weighted mean (PSNR / SSIM / LPIPS): MCG-diff
    # at 20 grid points, gaussian_blur
    # 23.31 / 0.836 / 0.192, sr2 21.83 / 0.763 / 0.243; FPS-SMC needs 50 steps (at 20: box
    # 17.40 / 0.422 / 0.382 and blur 21.39 / 0.761 / 0.256, c_rate 0.5 / 0.2 / 0.99 no better;
    # at 50: box 18.72 / 0.521 / 0.254, blur 23.04 / 0.830 / 0.182)
    "mcg_diff": _BLUR,
    "fps_smc": _BLUR,
    # the covariance-aware methods: a Jacobian product and a solve per step
    "mmps": _BLUR,
    "tmpd": _BLUR,
}

# Static options per method and task (method -> option -> task -> value). RED-diff starts from
# A^+ y; for the 9x9 blur the exact pseudo-inverse divides the noise by singular values near 0
# (5.2 dB), so the demo starts it from A^T y there (the official code truncates instead). DAPS
# solves each annealing step's ODE in 2 Euler steps instead of 5 (see METHOD_RESPACING).
OPTIONS = {
    "reddiff": {"init": {"gaussian_blur": "adjoint"}},
    "daps": {"ode_steps": {"box": 2, "random": 2, "gaussian_blur": 2, "sr2": 2}},
    # RePaint: a short walk (20 steps, jumps of 5 steps twice: 35 network calls) instead of the
    # official 250 steps with jumps of 10 ten times (2410 calls)
    "repaint": {"jump_length": {"box": 5}, "jump_n_sample": {"box": 2}},
    # PnP-DM: 10 EDM grid levels per prior step, solved as an ODE. The SDE Euler step (the
    # official edm_sde mode, lmbd 2) is a small-step rule: from level t to t' = 0.1 t it moves
    # x to D - 0.8 (x - D) and adds noise of std 1.3 t, so 10 levels leave coloured noise
    # (blur 17.09 / 0.509 / 0.519, below the measurement); the ODE step moves x to
    # D + (t'/t)(x - D) (blur 22.89 / 0.820 / 0.215)
    "pnpdm": {
        "prior_steps": {"box": 10, "random": 10, "gaussian_blur": 10, "sr2": 10},
        "mode": {"box": "ode", "random": "ode", "gaussian_blur": "ode", "sr2": "ode"},
    },
    # 2 particles: (steps - 1) x 2 network calls per image; the weighted mean is the image. With 4
    # (twice the run time) the rows are nearly the same: FPS-SMC blur 23.04 / 0.830 / 0.182
    # against 23.11 / 0.829 / 0.187 with 2, MCG-diff blur 23.31 / 0.836 / 0.192 against 23.28 /
    # 0.830 / 0.197, TDS box 18.50 / 0.531 / 0.251 against 18.76 / 0.550 / 0.244
    "mcg_diff": {
        "num_particles": {"gaussian_blur": 2, "sr2": 2},
        "estimator": {"gaussian_blur": "mean", "sr2": "mean"},
    },
    "fps_smc": {"num_particles": {"gaussian_blur": 2}, "estimator": {"gaussian_blur": "mean"}},
    "tds": {"num_particles": {"box": 2}, "estimator": {"box": "mean"}},
}

# Respacing per method where it differs from `respacing` / `task_respacing` (method wins). The
# methods beyond SDEdit, Score-ALD and DPS run short schedules (CPU time): 20 uniform-skip
# steps (skip20) for the DDIM-based ones and DiffPIR's own 20-step grid.
# RED-diff and DAPS need more, at their official settings otherwise:
# - RED-diff is Adam on mu, and Adam's step is about lr per pixel whatever the gradient's size,
#   so where only the noisy denoiser term acts (the box), 20 steps of lr 0.25 leave a square of
#   coloured noise (18.01 dB / LPIPS 0.242 even with its weight lowered to 0.02), and on the
#   blur heavy colour noise; at 100 steps (skip100) the official settings settle (box 19.65 /
#   0.218; 200 steps: 19.42 / 0.217, blur 23.33 / 0.169);
# - DAPS at 10 annealing steps of 5 ODE steps leaves colour noise on the blur (tau 0.01: 21.49 /
#   0.239; a larger tau trades it for hallucinated texture: 0.03 / 0.05 / 0.1 give LPIPS 0.250 /
#   0.326 / 0.489); 50 annealing steps of 2 ODE steps (100 network calls) give 23.22 / 0.201.
METHOD_RESPACING = {
    "ddrm": "skip20",
    "ddnm": "skip20",
    "pigdm": "skip20",
    "diffpir": "20",
    "reddiff": "skip100",
    "daps": "50",
    # DMPS's step (1 - alpha)/sqrt(alpha) is ~1-3 at the first of 20 steps, where the score taken
    # at x_t overshoots (box 13.72 dB at 20 steps, 18.41 / 0.537 / 0.181 at 100; gaussian_blur
    # 33.53 / 0.980 / 0.019, sr2 21.81 / 0.792 / 0.217 at 100, 3 images)
    "dmps": "100",
    # MPGD's fewest official steps (ddim20, scale 17.5 at 256 px)
    "mpgd": "ddim20",
    "repaint": "20",
    # MCG at 20 steps (50 costs 2.5x the gradient steps and scores no better on box)
    "mcg": "20",
    # DSG's fewest official steps (diffusion_ddim20_config.yaml: timestep_respacing 20)
    "dsg": "20",
    # PnP-DM: 10 split-Gibbs iterations (the official 100 x 100 EDM steps is 10^4 network calls)
    "pnpdm": "10",
    # the particle samplers (mcg_diff: its official linspace grid; see METHOD_TASKS)
    "mcg_diff": "mcgdiff20",
    "fps_smc": "50",
    "mmps": "20",
    "tmpd": "20",
    "tds": "20",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config_lib.parse_arg(arg, __file__)  # no options: anything given is an error
    c = ml_collections.ConfigDict()
    c.model = "demo"
    c.data = "demo"
    c.num_images = 0
    c.seed = 0
    c.batch_size = 0
    # worker processes on a CPU (elsewhere the runs take turns in this process), each running
    # one (method, task) at a time: two overlap one run's tracing and compilation with another's
    # sampling on a 2-core CPU (the 4-task demo: 351 s, against 389 s with two threads that
    # execute one program at a time); the results do not depend on it (jaxdiff.demo)
    c.workers = 2
    # XLA:CPU compiles each of the demo's ~30 programs kernel by kernel (most of its time), and
    # LLVM level 1 instead of XLA's default 2 compiles them a quarter faster (DPS: 16.4 against
    # 20.6 s of CPU) with the same run time at 32 px (jaxdiff.xla_options); None: XLA's default
    c.xla_backend_optimization_level = 1
    c.respacing = "50"  # DDPM samples and every task not in task_respacing
    c.task_respacing = ml_collections.ConfigDict(TASK_RESPACING)
    c.tasks = TASKS
    c.methods = METHODS
    c.baselines = BASELINES
    c.ddpm_samples = 8  # unconditional samples of the prior (ddpm_samples.png); 0 = none
    c.method_respacing = ml_collections.ConfigDict(METHOD_RESPACING)
    c.hparams = ml_collections.ConfigDict(HPARAMS)
    c.options = ml_collections.ConfigDict(OPTIONS)
    c.method_tasks = ml_collections.ConfigDict(METHOD_TASKS)
    c.task_overrides = ml_collections.ConfigDict(TASK_OVERRIDES)
    return c
