"""ReSample: DDIM in a latent space with a DPS step and, at chosen steps, hard data consistency
by an optimisation followed by stochastic resampling (Song et al., ICLR 2024; soominkwon/resample
ldm/models/diffusion/ddim.py resample_sampling; docs/methods.md), one image at a time.

On the CompVis DDIM grid ("ldmN"), at respaced index k (a = abar_k, a' = abar_prev_k):

    z' = DDIM(z) (eta 0);  z <- z' - scale a grad_z ||y - A(D(z0~(z)))||      (DPS through UNet, D)
    z0~(z) = (z - c eps(z)) / sqrt(a), c = sqrt(1 - a) (Tweedie); official: c = 1 - a
    at k % travel_every == 0, 0 < k <= K - K // splits (K steps):
        z_t = z; `min(travel_steps, k)` DDIM steps ahead give z0~ there (official quirk: each
        one's UNet at the next timestep with the previous index's coefficients)
        k >= K // splits: x = argmin ||y - A(x)||^2 from D(z0~) (AdamW), z0 = E(x)
                          (official: the first stage's own output, without its scale factor)
        else:            z0 = argmin ||y - A(D(z))||^2 from z0~ (AdamW, 200-loss window)
        s = sigma_scale (1 - a')/(1 - a)(1 - a/a')
        z = (s sqrt(a') z0 + (1 - a') z_t) / (s + 1 - a') + sqrt(1/(1/s + 1/(1 - a'))) n
    finally z = the latent optimisation from z; result.x0 = D(z).

The DPS gradient goes through the UNet (the paper's grad_z); official=True (or unet_grad=False)
treats eps as a constant, as the official apply_model runs under torch.no_grad (ddpm.py).
The optimisations are `samplers/adamw.py` (torch AdamW; mean squared losses). Per image by
default; the official DPS norm and optimisation losses are the whole batch's (the norm of the
batch's residual, the MSE over the batch tensor, whose value stops every image's optimisation at
one step): `batch_coupled=True` reproduces them under `batched` (identical at batch 1). Draws of
a step: {"resample": (h,w,c)} (used only at the resampling steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import common
from jaxdiff.samplers.adamw import adamw_minimize
from jaxdiff.samplers.base import chain, initial_x, register_sampler
from jaxdiff.samplers.common import as_forward, check_measurement, resolve_hparams
from jaxdiff.samplers.latent_common import decoded, ldm_ddim_tables, norm_guidance

LABEL = "resample"


def _nfe(num_steps: int, options: dict) -> int:
    """One UNet call per step plus min(travel_steps, k) at each time-travel step k."""
    n, every = int(num_steps), int(options.get("travel_every", 10))
    ahead, top = int(options.get("travel_steps", 5)), n - n // int(options.get("splits", 3))
    return n + sum(min(ahead, k) for k in range(1, n) if k % every == 0 and k <= top)


@register_sampler(
    LABEL,
    needs=("operator", "measurement", "latent_prior"),
    # ddim.py resample_sampling: scale=a_t*.5, sigma's 40, AdamW lr 1e-2 (pixel), 5e-3 (latent)
    hparams={"scale": 0.5, "sigma_scale": 40.0, "pixel_lr": 1e-2, "latent_lr": 5e-3},
    ranges={
        "scale": "[0, 100]",
        "sigma_scale": "(0, 1000]",
        "pixel_lr": "(0, 1]",
        "latent_lr": "(0, 1]",
    },  # fmt: skip
    nfe=_nfe,
    grad=True,
)
def make_resample(
    model_fn,
    schedule,
    *,
    operator=None,
    noise=None,
    defaults,
    loop,
    latent,
    image_shape=None,
    travel_steps: int = 5,
    travel_every: int = 10,
    splits: int = 3,
    tol: float = 1e-6,
    pixel_max_iters: int = 2000,
    latent_max_iters: int = 500,
    latent_window: int = 200,
    official: bool = False,
    unet_grad: bool | None = None,
    batch_coupled: bool = False,
    dtype=jnp.float32,
):
    """`sample(params, key, y, op_params, hparams, replay, valid)`; result.x0 is decoded.
    replay: {"x_T": (h,w,c), "noise": {"resample": (K, h,w,c)}}."""
    del noise, image_shape
    # ldm/models/diffusion/ddpm.py wraps apply_model in torch.no_grad ("only for inverse problem
    # solving"): the official DPS gradient skips the UNet's Jacobian
    unet_grad = (not official) if unet_grad is None else bool(unet_grad)
    counts = {"travel_steps": travel_steps, "travel_every": travel_every, "splits": splits,
              "pixel_max_iters": pixel_max_iters, "latent_max_iters": latent_max_iters,
              "latent_window": latent_window}  # fmt: skip
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{LABEL}: {name} must be an integer >= 1, got {v!r}")
    if not tol >= 0:
        raise ValueError(f"{LABEL}: tol must be >= 0, got {tol!r}")
    if schedule is None:
        raise ValueError(f"{LABEL}: needs the model's schedule (the CompVis DDIM tables)")
    forward = as_forward(operator)
    lshape, ishape = tuple(latent.latent_shape), tuple(latent.image_shape)
    tab = ldm_ddim_tables(schedule)
    abar, abar_prev = tab["abar"], tab["abar_prev"]
    ts = np.asarray(schedule.timestep_map)
    total = len(ts)
    split = total // int(splits)
    ks = np.arange(total)[::-1]
    travel = (ks % int(travel_every) == 0) & (ks > 0) & (ks <= total - split)
    kind = np.where(travel, np.where(ks >= split, 1, 2), 0)  # 0 none, 1 pixel, 2 latent

    def sample(params, key, y, op_params=None, hparams=None, replay=None, valid=True):
        def coupled(v):  # the official whole-batch losses (AdamW's stop and gradient scale)
            return common.batch_sum(v, valid, LABEL, "batch_coupled")

        coupled = coupled if batch_coupled else None
        h = {n: v.astype(dtype) for n, v in resolve_hparams(defaults, hparams, LABEL).items()}
        check_measurement(forward, op_params, jax.ShapeDtypeStruct(ishape, dtype), y, LABEL)
        y = jnp.asarray(y, dtype)
        z_T, k_loop = initial_x(key, replay, lshape, dtype, LABEL)
        A = jnp.asarray(abar, dtype)
        AP = jnp.asarray(abar_prev, dtype)
        T = jnp.asarray(ts)

        def eps_at(z, t):
            return model_fn(params, z[None], jnp.reshape(t, (1,)))[0]

        def ddim(z, e, idx):
            a, ap = A[idx], AP[idx]
            x0 = (z - jnp.sqrt(1 - a) * e) / jnp.sqrt(a)
            c = (1 - a) if official else jnp.sqrt(1 - a)
            pseudo = (z - c * e) / jnp.sqrt(a)
            return jnp.sqrt(ap) * x0 + jnp.sqrt(1 - ap) * e, pseudo

        def latent_loss(z):
            r = y - forward(op_params, latent.decode(params, z))
            return jnp.mean(r * r)

        def latent_opt(z):
            return adamw_minimize(latent_loss, z, lr=h["latent_lr"], tol=tol,
                                  max_iters=latent_max_iters, window=latent_window,
                                  batch_sum=coupled)  # fmt: skip

        def step(z, k, d, state):
            def residual(z_in):
                e = eps_at(z_in, T[k])
                out, pseudo = ddim(z_in, e if unet_grad else jax.lax.stop_gradient(e), k)
                return {"y": y - forward(op_params, latent.decode(params, pseudo))}, (out, pseudo)

            g, norms, (out, pseudo) = norm_guidance(
                residual, z, {"y": 1.0}, coupled=batch_coupled, valid=valid, where=LABEL,
                flag="batch_coupled",
            )  # fmt: skip
            norm = norms["y"]
            z_dps = out - h["scale"] * A[k] * g
            a, ap = A[k], AP[k]

            def travel_to(z_t):
                # min(travel_steps, k) DDIM steps from z_t (at timestep T[k-1]); the official
                # loop pairs UNet(T[k-1-j]) with index k-j's coefficients (ts_ / index_)
                zz, ps = z_t, z_t
                for j in range(min(int(travel_steps), int(total) - 1)):
                    t_j = jnp.maximum(k - 1 - j, 0)
                    e = eps_at(zz, T[t_j])
                    z_n, p_n = ddim(zz, e, jnp.maximum(k - j, 0) if official else t_j)
                    zz, ps = jnp.where(j < k, z_n, zz), jnp.where(j < k, p_n, ps)
                return ps

            def resample(z0, z_t):
                s = h["sigma_scale"] * (1 - ap) / (1 - a) * (1 - a / ap)
                mean = (s * jnp.sqrt(ap) * z0 + (1 - ap) * z_t) / (s + 1 - ap)
                return mean + jnp.sqrt(1 / (1 / s + 1 / (1 - ap))) * d["resample"]

            def pixel(z_t):
                x = latent.decode(params, travel_to(z_t))

                def loss(x):
                    r = y - forward(op_params, x)
                    return jnp.mean(r * r)

                res = adamw_minimize(loss, x, lr=h["pixel_lr"], tol=tol,
                                     max_iters=pixel_max_iters, batch_sum=coupled)  # fmt: skip
                z0 = latent.encode(params, res.x)
                if official:  # encode_first_stage: the encoder's output h, not (h - shift) * scale
                    z0 = z0 / latent.scale + latent.shift
                return resample(z0, z_t), res.steps

            def lat(z_t):
                res = latent_opt(travel_to(z_t))
                return resample(res.x, z_t), res.steps

            def none(z_t):
                return z_t, jnp.zeros((), jnp.int32)

            z_new, iters = jax.lax.switch(
                jnp.asarray(kind)[total - 1 - k], [none, pixel, lat], z_dps
            )
            rec = {
                "dps_grad": g,
                "z_after_dps": z_dps,
                "pseudo_x0": pseudo,
                "dps_norm": norm,
                "opt_steps": iters,
            }
            return z_new, state, rec

        def draw(key_k, z):
            return {"resample": jax.random.normal(key_k, z.shape, z.dtype)}

        out = chain(step, z_T, ks, key=k_loop, replay=replay, loop=loop, label=LABEL, draw=draw)
        res = latent_opt(out.x0)
        traj = out.trajectory
        if traj is not None:
            traj = {**traj, "final_opt_steps": res.steps, "z_before_final": out.x0}
        return decoded(latent, params, out._replace(x0=res.x, trajectory=traj))

    sample.kind = kind
    return sample
