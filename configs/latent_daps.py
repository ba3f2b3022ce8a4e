"""Latent DAPS (Zhang et al., CVPR 2025) with the official latent-space settings, one preset per
task and prior (docs/methods.md).

    python -m scripts.reproduce --config=configs/latent_daps.py:sr4 \
        --config.model=LDM_FOLDER --workdir=runs/latent_daps_sr4

`model` must be a converted latent prior folder (`python -m convert_weights FILE.ckpt --out DIR`
for a CompVis LDM, a diffusers pipeline folder for Stable Diffusion). Sampler
(zhangbingliang2019/DAPS at 098df6b): configs/sampler/latent_edm_daps.yaml (LDM) and
sd_edm_daps.yaml (SD), both 50 annealing steps on the EDM poly-7 grid from sigma_max 10 to
sigma_min 0.1 (commands/ldm_ffhq.sh and sd_ffhq.sh pass the same 50 and 2), each with a 2-step
Euler solve of the PF-ODE down to sigma 0.001 (100 UNet calls), then damped HMC (mc_algo hmc,
prior_solver gaussian, tau 0.01) with the per-task values of configs/task/<task>.yaml groups
"ldm" / "sd" below; the data gradient through the decoder is clamped to [-1, 1]
(LatentWrapper.gradient). The timestep map is the prior's own schedule ("trained"); the official
LDM runs read their models on the linear 1e-4..0.02 VP-SDE instead (`timestep_map="vp"`,
docs/methods.md), the SD runs on SD's own schedule as here.

prior=ldm (default): the DPS 256 px task presets, as the repo's LDM tasks (sigma 0.05).
prior=sd: the tasks at Stable Diffusion's 512 px decode (tasks.latent_task), sigma 0.01 (the sd
group's operator sigma). The official SD wrapper decodes at 512 and resizes to 256 bilinearly
before the operator and guides the UNet with "a natural looking image" at scale 7.5; here the
operator takes the decoded image as it is and the UNet its unconditional context.
"""

from __future__ import annotations

from jaxdiff import config_lib, tasks

# configs/task/<file>.yaml mcmc_sampler_config: (num_steps, lr, lr_min_ratio, momentum)
LDM = {
    "sr4": (24, 1.35e-4, 0.023, 0.86),  # down_sampling.yaml, group ldm
    "box": (15, 9.02e-6, 0.13, 0.74),  # inpainting.yaml (box 128)
    "random": (38, 8.4e-6, 0.013, 0.92),  # inpainting_rand.yaml (70 %; the preset draws 30-70 %)
    "gaussian_blur": (35, 2.7e-6, 0.95, 0.95),  # gaussian_blur.yaml (61, 3.0)
    "motion_blur": (49, 2.4e-5, 0.041, 0.45),  # motion_blur.yaml (61, 0.5)
    "phase_retrieval": (65, 2.1e-5, 0.12, 0.41),  # phase_retrieval.yaml (oversample 2.0)
}
SD = {
    "sr4": (30, 1e-4, 1.0, 0.45),  # down_sampling.yaml, group sd
    "box": (58, 1.11e-6, 0.43, 0.92),  # inpainting.yaml
    "random": (15, 3e-5, 1.0, 0.6),  # inpainting_rand.yaml
    "gaussian_blur": (40, 1e-5, 1.0, 0.9),  # gaussian_blur.yaml
    "motion_blur": (30, 2e-5, 1.0, 0.85),  # motion_blur.yaml
    "phase_retrieval": (95, 1.1e-4, 0.027, 0.47),  # phase_retrieval.yaml
}
# tasks with no official config take the down_sampling values
NO_CONFIG = ("sr2", "denoise", "colorize")
SIGMA = {"ldm": 0.05, "sd": 0.01}  # the groups' operator.sigma


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg, __file__, task=config_lib.task_choice(), prior=config_lib.Choice("ldm", ("ldm", "sd"))
    )
    c = config_lib.base_config(a.task)
    if a.prior == "sd":
        c.task = tasks.latent_task(a.task)
    c.task.sigma = SIGMA[a.prior]
    table = LDM if a.prior == "ldm" else SD
    steps, lr, lr_min_ratio, momentum = table["sr4" if a.task in NO_CONFIG else a.task]
    c.method = "latent_daps"
    c.sampler.respacing = "50"  # annealing_scheduler_config.num_steps (ldm_ffhq.sh: 50)
    o = c.sampler.options
    o.sigma_max = 10.0  # latent_edm_daps.yaml / sd_edm_daps.yaml sigma_max
    o.sigma_min = 0.1  # annealing_scheduler_config.sigma_min (replaced by 0 as the last level)
    o.rho = 7.0  # timestep 'poly-7'
    o.ode_steps = 2  # diffusion_scheduler_config.num_steps (ldm_ffhq.sh: 2)
    o.ode_sigma_min = 0.001  # diffusion_scheduler_config.sigma_min
    o.ode_rho = 7.0  # diffusion_scheduler_config.timestep 'poly-7'
    o.mc_algo = "hmc"  # task yaml <group>.mcmc_sampler_config.mc_algo
    o.mcmc_steps = steps  # <group>.mcmc_sampler_config.num_steps
    o.grad_clip = 1.0  # forward_operator LatentWrapper.gradient: torch.clamp(grad, -1, 1)
    h = c.sampler.hparams
    h.lr = lr  # <group>.mcmc_sampler_config.lr
    h.tau = 0.01  # <group>.mcmc_sampler_config.tau (every task)
    h.lr_min_ratio = lr_min_ratio  # <group>.mcmc_sampler_config.lr_min_ratio
    h.momentum = momentum  # <group>.mcmc_sampler_config.momentum
    return c
