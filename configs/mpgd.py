"""MPGD (He et al., ICLR 2024), the pixel-space variant without projection (`mpgd_wo_proj`),
with the official code's settings (docs/methods.md).

    python -m scripts.reproduce --config=configs/mpgd.py:sr4,steps=20 --workdir=runs/mpgd_sr4

Sampler (KellyYutongHe/mpgd_pytorch linear_inv: configs/mgpd_diffusion_config.yaml,
ffhq_sample_condition.py, scripts/wo_proj_ffhq_super_resolution.sh): the x0ddim sampler over
`ddim<steps>` respaced steps of the 1000-step linear schedule (ffhq_sample_condition.py sets
timestep_respacing = f"ddim{timestep}" below 1000), x0 clamped (clip_denoised True), eta 0.5
(the script's --eta default), and the guidance scale of the official script for the step count:
17.5 at 20 steps, 7.5 at 50, 4 at 100. The official linear tasks are the configs' sr4
(super_resolution_config.yaml: scale_factor 4) and Gaussian deblurring
(gaussian_deblur_config.yaml: kernel_size 61, intensity 3.0), noise sigma 0.05; the same
settings run on every other linear task. The scales were set for 256 px images (the demo's
32 px prior sweeps its own, configs/demo.py). Phase retrieval (nonlinear) raises a clear error.
"""

from __future__ import annotations

from jaxdiff import config_lib

LINEAR_TASKS = (
    "box",
    "random",
    "gaussian_blur",
    "motion_blur",
    "sr4",
    "sr2",
    "denoise",
    "colorize",
)
# scripts/wo_proj_ffhq_super_resolution.sh: --timestep 20 / 50 / 100 with --scale 17.5 / 7.5 / 4
SCALE = {"20": 17.5, "50": 7.5, "100": 4.0}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg, __file__, task=config_lib.task_choice(), steps=config_lib.Choice("100", tuple(SCALE))
    )
    c = config_lib.base_config(a.task)
    if c.task.name not in LINEAR_TASKS:
        raise ValueError(
            f"mpgd: task {c.task.name!r} has a nonlinear operator; the pixel-space MPGD guides "
            f"with the adjoint of a linear one ({', '.join(LINEAR_TASKS)})"
        )
    c.method = "mpgd"
    c.sampler.respacing = f"ddim{a.steps}"  # ffhq_sample_condition.py: f"ddim{args.timestep}"
    c.sampler.options.clip_denoised = True  # mgpd_diffusion_config.yaml: clip_denoised True
    c.sampler.hparams.eta = 0.5  # ffhq_sample_condition.py --eta default 0.5 (config eta 0.5)
    c.sampler.hparams.scale = SCALE[a.steps]  # wo_proj_ffhq_super_resolution.sh --scale
    return c
