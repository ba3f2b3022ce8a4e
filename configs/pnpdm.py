"""PnP-DM (Wu et al., NeurIPS 2024) with the official FFHQ settings, one preset per task
(docs/methods.md).

    python -m scripts.reproduce --config=configs/pnpdm.py:gaussian_blur --workdir=runs/pnpdm_blur

Sampler (zihuiwu/PnP-DM-public: configs/sampler/pnp_edm.yaml, commands.sh): 100 split-Gibbs
iterations (num_iters; the iterations are the respaced step count, so
`--config.sampler.respacing=20` gives a short run) with the coupling rho_k = max(10 * 0.9^k,
rho_min) (commands.sh: rho 10, rho_decay_rate 0.9, rho_min 0.3 for the deblurring and
super-resolution tasks, 0.1 for phase retrieval and coded diffraction); each prior step is the
EDM Euler sampler on EDM's 100-step grid (common_kwargs.num_steps 100, edm_kwargs rho 7, sigma
0.002 .. 80 clipped to the network's VP range) in the SDE mode (commands.sh's edm_sde line; its
vp / ve / iddpm discretizations are not ported). The model is read through EDM's VPPrecond
(beta_min 0.1, beta_d 19.9, M 1000). The likelihood step is exact for linear tasks (in the SVD basis
where the operator has one, as the code's super_resolution_svd; perturb-and-MAP with 50 CG steps
for motion blur) and 100 Langevin steps of 1e-4 for phase retrieval
(phase_retrieval.py proximal_generator). Start (operator.initialize): zeros (the deblurring tasks
and super_resolution_svd, which overrides the A^+ y of LinearSVDOperator), N(0, I) for phase
retrieval.
"""

from __future__ import annotations

from jaxdiff import config_lib

# commands.sh sampler.rho_min: 0.3 on gaussian / motion deblur and super-resolution, 0.1 on the
# nonlinear (coded diffraction, phase retrieval) tasks; the other tasks take the linear value.
RHO_MIN = {"phase_retrieval": 0.1}
# operator.initialize of pnpdm/tasks: randn for phase retrieval, zeros for the circulant deblurs
# and super_resolution_svd (which overrides LinearSVDOperator's A_pinv(y)); other tasks: zeros.
INIT = {"phase_retrieval": "random"}


def get_config(arg: str | None = None):
    a = config_lib.parse_arg(arg, __file__, task=config_lib.task_choice())
    c = config_lib.base_config(a.task)
    c.method = "pnpdm"
    c.sampler.respacing = "100"  # pnp_edm.yaml num_iters 100 (the split-Gibbs iterations)
    o = c.sampler.options
    o.prior_steps = 100  # pnp_edm.yaml common_kwargs.num_steps
    o.mode = "sde"  # commands.sh sampler.mode=edm_sde
    o.edm_rho = 7.0  # edm_kwargs.rho
    o.sigma_min = 0.002  # Denoiser_EDM's 'edm' default (common_kwargs.sigma_min null)
    o.sigma_max = 80.0  # Denoiser_EDM's 'edm' default (common_kwargs.sigma_max null)
    o.init = INIT.get(c.task.name, "zeros")
    o.langevin_steps = 100  # phase_retrieval.py proximal_generator num_iters
    o.langevin_step_size = 1e-4  # phase_retrieval.py proximal_generator gamma
    c.sampler.hparams.rho = 10.0  # commands.sh sampler.rho=10
    c.sampler.hparams.rho_decay = 0.9  # commands.sh sampler.rho_decay_rate=0.9
    c.sampler.hparams.rho_min = RHO_MIN.get(c.task.name, 0.3)  # commands.sh sampler.rho_min
    return c
