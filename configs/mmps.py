"""MMPS (Rozet et al., NeurIPS 2024) with the settings of azula's implementation
(docs/methods.md).

    python -m scripts.reproduce --config=configs/mmps.py:sr4 --workdir=runs/mmps_sr4

azula/guidance/mmps.py `MMPSDenoiser`: solver "gmres" with 1 iteration (its defaults), the
covariance product J^T v (its `autograd.grad(x_hat, x_t, v)`: product "vjp"), no clamp of the
denoiser's mean (jaxdiff predicts x0 from eps without clip_denoised); the measurement noise
sigma is the task's. azula/sample.py: `Sampler(steps=64)` is the default step count and
`DDPMSampler` the ancestral step (eta 1 here; azula's DDIMSampler eta scales the variance, so
its eta is this one squared). `solver=cg,iterations=3` etc. override (CG assumes a symmetric
covariance; the network's Jacobian is not, which is why azula defaults to GMRES). Every task
runs, phase retrieval included (A is linearized at x0_hat, as azula does).
"""

from __future__ import annotations

from jaxdiff import config_lib

SOLVERS = ("gmres", "cg", "dense")


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(
        arg, __file__, task=config_lib.task_choice(), steps=64,
        solver=config_lib.Choice("gmres", SOLVERS), iterations=1,
    )  # fmt: skip
    c = config_lib.base_config(a.task)
    c.method = "mmps"
    c.sampler.respacing = str(a.steps)  # azula/sample.py Sampler(steps=64)
    c.sampler.hparams.eta = 1.0  # azula DDPMSampler (the DDPM fixed-small step)
    c.sampler.options.solver = a.solver  # MMPSDenoiser(solver="gmres")
    c.sampler.options.iterations = a.iterations  # MMPSDenoiser(iterations=1)
    c.sampler.options.product = "vjp"  # autograd.grad(x_hat, x_t, v): J^T v
    c.sampler.options.clip_denoised = False  # the denoiser's mean is not clamped
    return c
