"""Replay of the PSLD / Latent DPS trajectory fixtures (`psld_<task>.npz`, `latent_dps_<task>.npz`
+ same-name .json).

The fixtures ran LituRout/PSLD's `DDIMSampler` (stable-diffusion/ldm/models/diffusion/psld.py)
unchanged on a tiny random-weight Stable Diffusion in the CompVis layout (`<model>.yaml` +
`<model>.ckpt` beside the fixture, the diffusers configs of the same architecture in `<model>/`);
Latent DPS is the same code with gamma = 0. The replay converts the checkpoint with the
single-file converter (`--model DIR` takes a converted folder instead), takes the stored
empty-prompt context as the UNet's context, rebuilds the operator from the stored mask / kernel /
Resizer tables (`parity.dps.build_operator`), runs the `psld` (or `latent_dps`) sampler with the
official code's options (official=True: its transposes, the noiser draw inside the norm, the
encoder's posterior sample; batch_coupled_norm=True: the whole-batch norms) on the official grid
(`time_grids.ldm_official`: the `ldm<N>` grid, except at stride 1 or one step, where the official
UNet runs one step above its alphas) of the stored alphas_cumprod, feeds x_T and every per-step
draw back and compares each state.

Rule (tests/fixtures/psld/README.txt): |got - ref| <= atol + rtol * max|ref| per step, atol
1e-6, rtol 2e-6, floored at 3x the official code's own float32-vs-float64 difference for that
array and step (sidecar "f64_replay"), never above 1e-3 * max(1, max|ref|); norms rtol 1e-5 or
3x their float64 level; grids exactly, DDIM tables rtol 1e-6.
"""

from __future__ import annotations

import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.diffusion import make_schedule
from jaxdiff.diffusion.time_grids import ldm_official
from jaxdiff.parity.common import Fixture, f64_level, f64_max, swap01
from jaxdiff.parity.dps import build_operator
from jaxdiff.samplers import batched, get_sampler

TRAJECTORY = ("z_t",)
ATOL, RTOL, RTOL_NORM = 1e-6, 2e-6, 1e-5
CAP = 1e-3
# fixture array -> the sampler's trajectory record
CHAIN = {"z_next": "x", "z0_hat": "z0_hat", "e_t": "eps", "x0_hat": "x0_hat"}
GLUE = {"glued": "glued", "z_glued": "z_glued"}
_CONVERTED: dict = {}


def converted(fx: Fixture, model_dir=None) -> str:
    """The fixture's CompVis checkpoint converted (once per process) with its config folder."""
    if model_dir is not None:
        return str(model_dir)
    name = str(fx.config["model"]).split(" ")[0]
    ckpt = fx.path.parent / name
    folder = fx.path.parent / fx.config["config_folder"]
    if not ckpt.is_file() or not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{fx.path}: model {ckpt.name} or its config folder {folder.name}/ not beside it; "
            "pass --model CONVERTED_DIR"
        )
    key = str(ckpt)
    if key not in _CONVERTED:
        from jaxdiff.convert.sd_single_file import convert_single_file

        out = pathlib.Path(tempfile.mkdtemp(prefix="jaxdiff-parity-")) / ckpt.stem
        convert_single_file(ckpt, out, folder, progress=False)
        _CONVERTED[key] = str(out)
    return _CONVERTED[key]


def replay(npz_path, model_dir=None, dtype: str = "float32") -> dict:
    from jaxdiff.latent import latent_fns, latent_model_fn, load_latent_prior
    from jaxdiff.operators import get_noise

    path = pathlib.Path(npz_path)
    fx = Fixture.load(path, None, dtype, sidecar_name=path.stem + ".json", trajectory=TRAJECTORY)
    method = fx.config["method"]
    sc = fx.config["sampler"]
    if sc.get("ddim_discretize", "uniform") != "uniform" or sc.get("prompt", "") != "":
        raise ValueError(f"{fx.path}: only the uniform DDIM grid and the empty prompt")
    if fx.config.get("noise", {}).get("name", "gaussian") != "gaussian":
        raise ValueError(f"{fx.path}: only Gaussian measurement noise")
    eta, omega, gamma, sigma = (float(fx[k]) for k in ("eta", "omega", "gamma", "sigma"))
    if method == "latent_dps" and gamma != 0:
        raise ValueError(f"{fx.path}: a latent_dps fixture with gamma {gamma} (PSLD's, not LDPS)")
    z_T = fx.nhwc("x_T")
    b = z_T.shape[0]
    steps = int(fx["ddim_timesteps"].shape[0])
    # the requested S (ddim_steps): CompVis's grid range(0, 1000, 1000 // S) + 1 has more than S
    # entries when S does not divide 1000, so the stored count is not S
    ddim_steps = int(sc.get("ddim_steps", fx.config.get("steps", steps)))
    levels = fx.config.get("f64_replay", {})
    with fx.context():
        prior, params = load_latent_prior(converted(fx, model_dir))
        params = jax.tree.map(lambda a: jnp.asarray(a, fx.jdtype), params)
        ctx = fx["context"]
        if not np.all(ctx == ctx[:1]):
            raise ValueError(f"{fx.path}: the images' contexts differ (one prompt expected)")
        params["context"] = fx.jnp(ctx[0])
        fns = latent_fns(prior, params)
        # the official grid as run: at stride 1 (or one step) the UNet one step above its tables
        alpha_steps, unet_steps = ldm_official(ddim_steps, len(fx["alphas_cumprod"]))
        sched = make_schedule(
            alphas_cumprod=fx["alphas_cumprod"], respacing=alpha_steps, convention="diffusers"
        ).with_model_timesteps(unet_steps)
        order = np.arange(sched.num_steps)[::-1]
        fx.exact("ddim_timesteps", sched.model_timestep_map)
        from jaxdiff.samplers.latent_common import ldm_ddim_tables

        tab = ldm_ddim_tables(sched)
        fx.rel("ddim_alpha", tab["abar"][order], 1e-6)
        fx.rel("ddim_alpha_prev", tab["abar_prev"][order], 1e-6)
        a_t, a_p = tab["abar"][order], tab["abar_prev"][order]
        fx.rel("ddim_sigma", eta * np.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)), 1e-5, 1e-7)
        shape = fns.image_shape
        op = build_operator(fx, fx.config.get("operator", {}), shape)
        params_op = op.sample(None)
        x0 = fx.jnp(fx.nhwc("x0"))
        fx.check("y_clean", jax.vmap(lambda x: op.apply(params_op, x))(x0), 1e-5, nhwc=True)
        fx.check("y", fx.arrays["y_clean"] + sigma * fx["y_noise"], 1e-6)
        y = fx.jnp(fx.nhwc("y"))
        # sigma 0: the official noiser still draws (times 0); jaxdiff calls that noise "clean"
        noise = get_noise("gaussian", sigma=sigma) if sigma > 0 else get_noise("clean")
        common = dict(operator=op, noise=noise, latent=fns, official=True, eta=eta,
                      batch_coupled_norm=True, dtype=fx.jdtype, keep_trajectory=True)  # fmt: skip
        draws = {"z": swap01(fx.nhwc("noise"))}
        if sigma > 0:
            draws["meas"] = swap01(fx.nhwc("noise_meas"))
        if method == "psld":
            sample = get_sampler("psld")(
                latent_model_fn(prior), sched, omega=omega, gamma=gamma, **common
            )
            if fns.stochastic_encoder:
                draws["enc"] = swap01(fx.nhwc("noise_enc"))
        else:
            sample = get_sampler("latent_dps")(latent_model_fn(prior), sched, scale=omega, **common)
            for name in ("noise_enc", *GLUE, "glue_norm"):
                fx.skip(name, "the gluing term, weighted by gamma = 0 (Latent DPS)")
        rep = {"x_T": fx.jnp(z_T), "noise": jax.tree.map(fx.jnp, draws)}
        keys = jax.random.split(jax.random.key(0), b)
        res = jax.jit(batched(sample, shared_op_params=True))(params, keys, y, params_op, None, rep)
        traj = jax.tree.map(swap01, res.trajectory)
    z_in = np.concatenate([fx.jnp(z_T)[None], np.asarray(traj["x"][:-1])])
    states = {**CHAIN, **(GLUE if method == "psld" else {})}
    for name, key in states.items():
        got = traj[key]
        _state(fx, name, got, levels)
    _state(fx, "z_t", z_in, levels)
    fx.check("z0", res.trajectory["x"][:, -1], ATOL, RTOL, nhwc=True,
             f64=f64_max(f64_level(levels, "z0")))  # fmt: skip
    fx.check("sample", res.x0, ATOL, RTOL, nhwc=True, f64=f64_max(f64_level(levels, "sample")))
    norms = {"meas_norm": "meas_norm" if method == "psld" else "norm", "glue_norm": "glue_norm"}
    for name, key in norms.items():
        if key in traj:
            rel = f64_max(levels.get(f"rel_diff_{name}_per_step"))
            fx.rel(name, np.asarray(traj[key])[:, 0], max(RTOL_NORM, 3 * (rel or 0.0)))
    return fx.report(
        method, images=b, steps=steps, eta=eta, omega=omega, gamma=gamma, sigma=sigma,
        diverged_at=np.asarray(res.diverged_at).tolist(),
    )  # fmt: skip


def _state(fx: Fixture, name: str, got, levels) -> None:
    """A per-step state under the README's rule, capped at CAP * max(1, max|ref|)."""
    r = fx.check(name, got, ATOL, RTOL, nhwc=True, per_step=True, f64=f64_level(levels, name))
    if r is not None:
        r["cap"] = CAP * max(1.0, float(np.abs(fx.arrays[name]).max()))
        r["pass"] = bool(r["pass"] and r["max_abs_err"] <= r["cap"])
