"""DAPS (Zhang et al., CVPR 2025) with the official FFHQ 256 pixel-space settings, one preset
per task (docs/methods.md).

    python -m scripts.reproduce --config=configs/daps.py:box --workdir=runs/daps_box

Sampler (zhangbingliang2019/DAPS at 098df6b: commands/pixel_ffhq.sh = DAPS-1K, the paper's main
FFHQ setting; configs/sampler/edm_daps.yaml; configs/task/<task>.yaml, group "pixel"):
200 annealing steps on the EDM poly-7 grid from sigma_max 100 to sigma_min 0.1 (time grid "daps",
jaxdiff/diffusion/time_grids.py; the number of steps is the respacing: `sampler.respacing = "200"`, so `--config.sampler.respacing=20` gives a
short run), each with a 5-step Euler solve of the probability-flow ODE down to sigma 0.01 (1000
network calls) and 100 Langevin steps (tau 0.01, lr_min_ratio 0.01, lr per task below).
The model is read through EDM's VPPrecond (beta_min 0.1, beta_d 19.9): the linear DDPM schedule.
"""

from __future__ import annotations

from jaxdiff import config_lib

# mcmc_sampler_config.lr of configs/task/<file>.yaml, group "pixel" (all: num_steps 100, tau 0.01,
# lr_min_ratio 0.01, mc_algo langevin, prior_solver gaussian).
LRS = {
    "box": 5e-5,  # inpainting.yaml (box, mask_len_range [128, 129])
    "random": 1e-4,  # inpainting_rand.yaml (the official task removes 70% of the pixels; the
    # shared "random" task keeps DPS's 30-70% so that the methods share one problem)
    "gaussian_blur": 1e-4,  # gaussian_blur.yaml (kernel 61, intensity 3.0)
    "motion_blur": 5e-5,  # motion_blur.yaml (kernel 61, intensity 0.5)
    "sr4": 1e-4,  # down_sampling.yaml (scale_factor 4)
    "sr2": 1e-4,  # no official config: the x4 value
    "phase_retrieval": 5e-5,  # phase_retrieval.yaml (oversample 2.0); nonlinear A is fine
    "denoise": 1e-4,  # no official config: the down_sampling / gaussian_blur value
    "colorize": 1e-4,  # no official config: the down_sampling / gaussian_blur value
}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    if c.task.name not in LRS:
        raise ValueError(f"daps: no preset for task {c.task.name!r}; known: {', '.join(LRS)}")
    c.method = "daps"
    # annealing_scheduler_config.num_steps 200 (commands/pixel_ffhq.sh overrides edm_daps.yaml's
    # 200 with the same value); the annealing steps are the schedule's respaced step count.
    c.sampler.respacing = "200"
    o = c.sampler.options
    o.sigma_max = 100.0  # edm_daps.yaml annealing_scheduler_config.sigma_max
    o.sigma_min = 0.1  # annealing_scheduler_config.sigma_min (replaced by 0 as the last level)
    o.rho = 7.0  # annealing_scheduler_config.timestep 'poly-7'
    o.ode_steps = 5  # diffusion_scheduler_config.num_steps (pixel_ffhq.sh: 5)
    o.ode_sigma_min = 0.01  # diffusion_scheduler_config.sigma_min
    o.ode_rho = 7.0  # diffusion_scheduler_config.timestep 'poly-7'
    o.mcmc_steps = 100  # task yaml pixel.mcmc_sampler_config.num_steps
    o.mc_algo = "langevin"  # task yaml pixel.mcmc_sampler_config.mc_algo ("hmc": pixel_hmc)
    c.sampler.hparams.lr = LRS[c.task.name]  # task yaml pixel.mcmc_sampler_config.lr
    c.sampler.hparams.tau = 0.01  # task yaml pixel.mcmc_sampler_config.tau
    c.sampler.hparams.lr_min_ratio = 0.01  # task yaml pixel.mcmc_sampler_config.lr_min_ratio
    c.sampler.hparams.momentum = 0.9  # HMC only (MCMCSampler's default; pixel_hmc sets its own)
    return c
