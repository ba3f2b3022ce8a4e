"""Replay of the Latent-DAPS fixtures (`latent_daps_<name>.npz` + `latent_daps.json`).

Settings come from the files: the annealing / ODE grids from the task's sampler_config, the MCMC
settings (algorithm, steps, lr, tau, lr_min_ratio, momentum) from its `mcmc`, VPPrecond's
constants from `vpprecond` (the official code maps sigma to the network's timestep the VP way:
replayed with timestep_map="vp"), the LDM from its `ldm_config` (checked against the converted
prior: latent shape, scale factor), the batch size from the arrays. The prior is the CompVis
checkpoint named in the sidecar, converted from beside the fixture (`--model DIR`: a converted
latent pipeline folder), its VQ codebook multiplied by the sidecar's `codebook_scale`; the
operator is DPS's, built from the stored arrays, and
y = A(x0) + sigma_y y_noise is checked. Every draw is fed back.

Compared per annealing step: the latents (z_t, z0hat, z0y, every ODE state and denoiser output,
every MCMC iterate, score, raw and clamped data gradient, HMC velocity), the decoded images
(x0hat, x0y, x_t and the decodings inside the loss), the loss, the grids, the step sizes. Rule
(fixture README): |err| <= 1e-5 * max(1, max|ref|), floored at 3x the official code's own
float32-vs-float64 difference (latent_daps.json f64_replay, per step) and never looser than
1e-3 * max(1, max|ref|); rtol 1e-5 on the loss, c_noise and step sizes, 1e-6 on the grids.
"""

from __future__ import annotations

import json
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion.annealing import poly_grid
from jaxdiff.parity.common import Fixture, swap01
from jaxdiff.parity.dps import build_operator, measurement

TRAJECTORY = ("z_t",)
RTOL_STATE = 1e-5
CAP = 1e-3  # never looser than CAP * max(1, max|ref|)
RTOL_LOSS = 1e-5
RTOL_GRID = 1e-6
OPERATOR_NAMES = {"down_sampling": "super_resolution", "inpainting": "inpaint"}
_CONVERTED: dict = {}


def find_beside(fx: Fixture, name: str) -> pathlib.Path:
    """A file the sidecar names: beside the fixture, one level up, or in ../latent."""
    here = fx.path.parent
    for folder in (here, here.parent, here.parent / "latent"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(
        f"{fx.path}: {name} not found beside it (or ../, ../latent); pass --model CONVERTED_DIR"
    )


def load_prior(fx: Fixture, model_dir, dtype):
    """(LatentFns, model_fn, params, prior) of the fixture's LDM, converted once per process."""
    from jaxdiff.convert.ldm_single_file import convert_ldm_file
    from jaxdiff.latent import latent_fns, latent_model_fn, load_latent_prior

    cfg = fx.config
    if model_dir is None:
        ckpt = find_beside(fx, cfg["model"])
        unet = find_beside(fx, cfg["unet_kwargs"].split()[0])
        vq = find_beside(fx, cfg["vq_config"].split("/", 1)[-1])
        # the UNet's image_size is the LDM yaml's latent size (the kwargs file's is the pixel
        # ADM's; the convolutions do not care, the prior's latent shape does)
        # and the VQ's scaling factor is the LDM yaml's scale_factor (LatentDiffusion's default 1.0)
        ldm = fx.task["ldm_config"]["model"]["params"]
        size, scale = int(ldm["unet_config"]["params"]["image_size"]), ldm.get("scale_factor", 1.0)
        key = (str(ckpt), str(unet), str(vq), size, float(scale))
        if key not in _CONVERTED:
            tmp = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-parity-"))
            kwargs = json.loads(unet.read_text())
            kwargs["kwargs"]["image_size"] = size
            (tmp / "unet.json").write_text(json.dumps(kwargs))
            vq_cfg = json.loads(vq.read_text())
            vq_cfg["scaling_factor"] = float(scale)
            (tmp / "vq.json").write_text(json.dumps(vq_cfg))
            convert_ldm_file(ckpt, tmp / "ldm", unet_config=tmp / "unet.json",
                             vq_config=tmp / "vq.json")  # fmt: skip
            _CONVERTED[key] = str(tmp / "ldm")
        model_dir = _CONVERTED[key]
    prior, params = load_latent_prior(model_dir, dtype=dtype)
    k = float(fx.task.get("codebook_scale", 1.0))
    if k != 1.0:  # the fixture's one weight change (its README): the VQ codebook times k
        fs = dict(params["first_stage"])
        emb = fs["quantize"]["embedding"]["embedding"]
        fs["quantize"] = {"embedding": {"embedding": np.asarray(emb, np.float32) * np.float32(k)}}
        params = {**params, "first_stage": fs}
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return latent_fns(prior, params), latent_model_fn(prior), params, prior


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    from jaxdiff.diffusion import make_schedule
    from jaxdiff.diffusion import scheduler as sched
    from jaxdiff.samplers import batched, get_sampler

    fx = Fixture.load(npz_path, "latent_daps", dtype, trajectory=TRAJECTORY)
    task = fx.task
    ann = task["sampler_config"]["annealing_scheduler_config"]
    ode = task["sampler_config"]["diffusion_scheduler_config"]
    mc, vp = task["mcmc"], fx.config.get("vpprecond", {})
    for sc in (ann, ode):
        if sc.get("name", "edm") != "edm" or not str(sc.get("timestep", "poly-7")).startswith(
            "poly-"
        ):
            raise ValueError(f"{fx.path}: only the 'edm' scheduler with 'poly-p' timesteps")
    if mc.get("prior_solver", "gaussian") != "gaussian":
        raise ValueError(f"{fx.path}: only prior_solver 'gaussian'")
    op_cfg = dict(task.get("operator", {}))
    op_cfg["name"] = OPERATOR_NAMES.get(op_cfg.get("name"), op_cfg.get("name"))
    z_start = fx.nhwc("z_start_noise")
    b = z_start.shape[0]
    rho = lambda sc: float(str(sc.get("timestep", "poly-7"))[5:])  # noqa: E731
    with fx.context():
        fns, model_fn, params, prior = load_prior(fx, model_dir, fx.jdtype)
        check_prior(fx, prior, fns, z_start.shape[1:])
        op = build_operator(fx, op_cfg, tuple(fns.image_shape))
        y = measurement(fx, op, float(op_cfg.get("sigma", 0.05)))
        abar = sched.alphas_cumprod(prior.scheduler)
        if int(vp.get("M", 1000)) != abar.size:
            raise ValueError(f"{fx.path}: VPPrecond's M differs from the prior's training steps")
        schedule = make_schedule(alphas_cumprod=abar, convention="diffusers")
        algo = mc.get("mc_algo", "langevin")
        sample = get_sampler("latent_daps")(
            model_fn, schedule, operator=op, latent=fns,
            annealing_steps=int(ann["num_steps"]), sigma_max=float(ann["sigma_max"]),
            sigma_min=float(ann["sigma_min"]), rho=rho(ann), ode_steps=int(ode["num_steps"]),
            ode_sigma_min=float(ode["sigma_min"]), ode_rho=rho(ode),
            mcmc_steps=int(mc["num_steps"]), mc_algo=algo, grad_clip=1.0, timestep_map="vp",
            vp_beta_min=float(vp.get("beta_min", 0.1)), vp_beta_d=float(vp.get("beta_d", 19.9)),
            lr=float(mc["lr"]), tau=float(mc["tau"]), lr_min_ratio=float(mc["lr_min_ratio"]),
            momentum=float(mc.get("momentum", 0.9)),
            record_inner=True, keep_trajectory=True, dtype=fx.jdtype,
        )  # fmt: skip
        noise = {
            "mcmc": np.moveaxis(fx.nhwc("mcmc_noise"), 2, 0),  # (N, L, B) -> (B, N, L)
            "renoise": swap01(fx.nhwc("renoise_noise")),  # (N, B, ...) -> (B, N, ...)
        }
        if algo == "hmc":
            noise["velocity"] = swap01(fx.nhwc("hmc_velocity_init"))
        rep = {"x_T": fx.jnp(z_start), "noise": jax.tree.map(fx.jnp, noise)}
        keys = jax.random.split(jax.random.key(0), b)
        run = jax.jit(batched(sample, shared_op_params=True))
        res = run(params, keys, y, op.sample(None), None, rep)
        traj = jax.tree.map(np.asarray, res.trajectory)
        final = np.asarray(res.x0)
    n = int(ann["num_steps"])
    fx.rel("sigma_steps", sample.sigmas, RTOL_GRID)
    fx.rel("ode_sigma", sample.ode_grid[:, :-1], RTOL_GRID)
    levels = task.get("f64_replay", {})
    if fx.dtype == "float64":  # the reference's float32 timesteps carry its own rounding
        fx.check("ode_c_noise", sample.c_noise, f64=levels.get("max_abs_diff_ode_c_noise"))
    else:
        fx.rel("ode_c_noise", sample.c_noise, RTOL_LOSS)
    fx.rel("mcmc_lr", traj["lr"][0], RTOL_LOSS)
    times = poly_grid(n, float(ann["sigma_max"]), float(ann["sigma_min"]), rho(ann))
    fx.add("anneal_grid", {"pass": bool(np.isclose(times[0], sample.sigmas[0], rtol=1e-6))})

    def steps_first(a):  # (B, N, ...) -> (N, B, ...); (B, N, K, ...) -> (N, K, B, ...)
        a = np.moveaxis(a, 0, 1)
        return np.moveaxis(a, 1, 2) if a.ndim > 5 else a

    got = {
        "z_t": steps_first(traj["x"]),
        "z0hat": steps_first(traj["z0_hat"]),
        "z0y": steps_first(traj["z0_y"]),
        "ode_z": steps_first(traj["ode_x"]),
        "ode_denoised": steps_first(traj["ode_denoised"]),
        "mcmc_z": steps_first(traj["mcmc_x"]),
        "mcmc_score": steps_first(traj["mcmc_score"]),
        "mcmc_data_grad": steps_first(traj["mcmc_data_grad"]),
        "mcmc_data_grad_raw": steps_first(traj["mcmc_data_grad_raw"]),
        "mcmc_decoded": steps_first(traj["mcmc_decoded"]),
        "x0hat": steps_first(traj["x0_hat"]),
        "x0y": steps_first(traj["x0_y"]),
        "x_t": steps_first(traj["x_t"]),
    }
    if algo == "hmc":
        got["hmc_velocity"] = steps_first(traj["hmc_velocity"])
    for key, g in got.items():
        ref = fx.arrays.get(key)
        if ref is None:
            continue
        top = max(1.0, float(np.abs(ref).max()))
        f64 = levels.get(f"max_abs_diff_{key}_per_step", levels.get(f"max_abs_diff_{key}"))
        if f64 is not None:  # the floor, capped so the rule is never looser than CAP
            f64 = np.minimum(np.asarray(f64, np.float64), CAP * top / 3)
        fx.check(key, g, RTOL_STATE * top, nhwc=True, per_step=True, f64=f64)
    fx.check("x_t", final, RTOL_STATE * max(1.0, float(np.abs(fx.arrays["x_t"][-1]).max())),
             ref=fx.arrays["x_t"][-1], nhwc=True, key="sample",
             f64=(levels.get("max_abs_diff_x_t_per_step") or [None])[-1])  # fmt: skip
    if "mcmc_loss" in fx:  # the official loss is summed over the batch
        fx.rel("mcmc_loss", traj["mcmc_loss"].sum(axis=0), RTOL_LOSS)
    for name in ("z_start_noise", "mcmc_noise", "renoise_noise", "hmc_velocity_init"):
        if name in fx:
            fx[name]
    fx.skip("x0", "the ground truth (compared through y_clean)")
    return fx.report("latent_daps", batch=b, annealing_steps=n, mc_algo=algo)


def check_prior(fx: Fixture, prior, fns, latent_shape) -> None:
    """The converted prior is the fixture's LDM: latent shape and scale factor."""
    cfg = fx.task.get("ldm_config", {}).get("model", {}).get("params", {})
    if tuple(fns.latent_shape) != tuple(latent_shape):
        raise ValueError(
            f"{fx.path}: the prior's latents are {tuple(fns.latent_shape)}, the fixture's "
            f"{tuple(latent_shape)}"
        )
    want = float(cfg.get("scale_factor", 1.0))
    have = float(getattr(prior.first_stage, "scaling_factor", 1.0))
    if not np.isclose(want, have, rtol=1e-7):
        raise ValueError(f"{fx.path}: the LDM's scale_factor {want} != the prior's {have}")
