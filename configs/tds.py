"""TDS (Wu et al., NeurIPS 2023) with the authors' image settings (docs/methods.md).

    python -m scripts.reproduce --config=configs/tds.py:box --workdir=runs/tds_box

blt2114/twisted_diffusion_sampler image_exp/image_confs/base_sampler_conf.yml: 4 particles,
systematic resampling at every step (ess_threshold null), no clamp (clip_denoised false);
mnist_model_and_diffusion_conf.yml: timestep_respacing '100'; image_exp/run_image.py: the twist
variance type 6 with tausq 0.12 (v_t = s_t^2 tausq / (s_t^2 + tausq), s_t^2 = (1 - abar)/abar;
sigma^2 is added for the task's noise). azula's TDSSampler resamples multinomially
(`resampling=multinomial`). The estimator is one drawn particle ("draw"; `estimator=mean`
averages them). The authors' image task is inpainting; A only enters the twist through
A(x0_hat), so every task runs, phase retrieval included.
"""

from __future__ import annotations

from jaxdiff import config_lib


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg, __file__, task=config_lib.task_choice(), steps=100, particles=4,
        resampling=config_lib.Choice("systematic", ("systematic", "multinomial")),
        estimator=config_lib.Choice("draw", ("draw", "mean")),
    )  # fmt: skip
    c = config_lib.base_config(a.task)
    c.method = "tds"
    c.sampler.respacing = str(a.steps)  # mnist_model_and_diffusion_conf.yml: '100'
    c.sampler.hparams.tausq = 0.12  # run_image.py main(var_type=6, tausq=0.12)
    c.sampler.options.num_particles = a.particles  # base_sampler_conf.yml num_particles: 4
    c.sampler.options.resampling = a.resampling  # resample_strategy: "systematic"
    c.sampler.options.estimator = a.estimator
    c.sampler.options.clip_denoised = False  # base_sampler_conf.yml clip_denoised: false
    c.sampler.options.clip_twisted = True  # mnist_model_and_diffusion_conf.yml clip_twisted: true
    return c
