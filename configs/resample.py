"""ReSample (Song et al., ICLR 2024) with the official settings (soominkwon/resample at 3e332b2,
sample_condition.py and ldm/models/diffusion/ddim.py resample_sampling; docs/methods.md).

    python -m scripts.reproduce --config=configs/resample.py:sr4 \
        --config.model=LDM_FOLDER --workdir=runs/resample_sr4

`model` must be a converted latent prior folder (the official runs use the CompVis FFHQ LDM,
VQ f4). CompVis DDIM on the uniform grid ("ldmN": range(0, 1000, 1000 // N) + 1),
`--ddim_steps` default 500, eta 0. The DPS step size is a_t * 0.5 for every task (ddim.py
passes scale=a_t*.5; the task yamls' conditioning scale is not read). Every 10 steps in the
first two thirds of the grid: 5 DDIM steps ahead, then the pixel optimisation (first third) or
the latent one (second third), then stochastic resampling with sigma 40 (1 - a')/(1 - a)
(1 - a/a'). The tasks keep the project's sigma_y 0.05 (the DPS benchmark's); the official task
yamls use 0.01 (`--config.task.sigma=0.01`).
"""

from __future__ import annotations

from jaxdiff import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice(), steps=500, factor=4)
    c = config_lib.base_config(a.task)
    if c.task.operator == "super_resolution":
        c.task.operator_config.factor = a.factor  # super_resolution_config.yaml scale_factor 4
    c.method = "resample"
    c.sampler.respacing = f"ldm{a.steps}"  # sample_condition.py --ddim_steps default 500
    o = c.sampler.options
    o.travel_steps = 5  # resample_sampling inter_timesteps=5 (posterior_sampler's call)
    o.travel_every = 10  # ddim.py `if index % 10 == 0`
    o.splits = 3  # ddim.py `splits = 3`
    o.tol = 1e-6  # pixel_ / latent_optimization: loss < eps**2, eps=1e-3
    o.pixel_max_iters = 2000  # pixel_optimization max_iters
    o.latent_max_iters = 500  # latent_optimization max_iters
    o.latent_window = 200  # latent_optimization: the loss 200 steps earlier
    h = c.sampler.hparams
    h.scale = 0.5  # ddim.py measurement_cond_fn(..., scale=a_t*.5)
    h.sigma_scale = 40.0  # ddim.py sigma = 40 * (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    h.pixel_lr = 1e-2  # pixel_optimization lr
    h.latent_lr = 5e-3  # latent_optimization lr=None -> 5e-3
    return c
