"""Replay of the operator fixtures (`operators*.npz` + JSON sidecar, fixture README part (e)).

Every setting (kernel sizes, std / intensity, SR factor and in_shape, mask ranges) is read from the
sidecar's "config", so files made with other settings replay the same way. Images come from arrays
`x`/`images` in the npz (NCHW) when present, else from the PNGs beside it (`op_image{i}_{name}.png`,
x = (u8/255 - 0.5)/0.5). Compared: the Gaussian kernel and blurred images, the motion blur of the
stored kernel, the Resizer tables, SR output and its true adjoint (vs torch's VJP), and the box /
random masks' size, position and fraction statistics over many keys (the fixture's own masks come
from numpy's RNG, so only their distribution can be matched).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.data import load_image
from jaxdiff.operators import get_operator
from jaxdiff.parity.common import Fixture, compare, nchw_to_nhwc, report, sidecar

ATOL_IMAGE = 1e-5  # float32 convolution / resize outputs in [-1, 1]
ATOL_TABLE = 1e-7  # kernels and Resizer weights (recomputed exactly; any error is a bug)
N_KEYS = 512  # mask draws per statistic


def _images(npz, cfg: dict, npz_path: pathlib.Path) -> np.ndarray:
    for name in ("x", "images"):
        if name in npz:
            return nchw_to_nhwc(npz[name]).astype(np.float32)
    names = cfg.get("config", {}).get("images")
    if names:
        paths = [npz_path.with_name(f"op_image{i}_{n}.png") for i, n in enumerate(names)]
    else:
        paths = sorted(npz_path.parent.glob("op_image*_*.png"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing or not paths:
        raise FileNotFoundError(f"{npz_path}: input images not found: {missing or 'op_image*.png'}")
    return np.stack([load_image(p) for p in paths])


def index_sets(fx: Fixture, shape, prefix: str = "") -> dict:
    """The official Inpainting's kept / missing index arrays, in the stored order (the order the
    official V and the measurement y = x[kept] follow: missing_indices may be torch.randperm's),
    checked as the sets the stored mask defines: an (H, W) mask (DDRM / DDNM: pixel p's channel c
    at 3 p + c) or (C, H, W) per image (RED-diff / PiGDM: channel-major). op_params: int32
    arrays, a leading batch axis where the fixture has one per image."""
    kept = np.asarray(fx[f"{prefix}kept_indices"])
    missing = np.asarray(fx[f"{prefix}missing_indices"])
    if f"{prefix}mask" in fx:
        mask = np.asarray(fx[f"{prefix}mask"])
        if mask.ndim == 2:
            from jaxdiff.operators.official_svd import inpainting_indices

            want = inpainting_indices(mask)
            masks = [(want["kept_indices"], want["missing_indices"])]
        else:
            flat = mask.reshape(-1, int(np.prod(shape)))
            masks = [(np.nonzero(m != 0)[0], np.nonzero(m == 0)[0]) for m in flat]
        kept_b, missing_b = kept.reshape(-1, kept.shape[-1]), missing.reshape(-1, missing.shape[-1])
        for name, got, k in (
            (f"{prefix}kept_indices", kept_b, 0),
            (f"{prefix}missing_indices", missing_b, 1),
        ):
            sets = np.stack([np.sort(g) for g in got])
            want_sets = np.stack([np.sort(m[k]) for m in masks[: len(got)]])
            fx.exact(name, sets, ref=want_sets)
    return {
        "kept_indices": np.asarray(kept, np.int32),
        "missing_indices": np.asarray(missing, np.int32),
    }


def svd_probes(fx: Fixture, svd, op_params, shape) -> None:
    """The official operator's SVD pieces on the stored probes (DDNM names them A_*, DDRM H_*),
    within 1e-5 * max(1, max|ref|)."""
    if "probe_x" not in fx:
        return
    from jaxdiff.operators.official_svd import from_flat, to_flat

    flat_x, py = fx.jnp(fx["probe_x"][0]), fx.jnp(fx["probe_y"][0])
    px = from_flat(flat_x, shape)
    got = {
        "probe_x": lambda: svd.H(op_params, px),
        "At_probe_y": lambda: to_flat(svd.Ht(op_params, py)),
        "pinv_probe_y": lambda: to_flat(svd.H_pinv(op_params, py)),
        "Vt_probe_x": lambda: svd.Vt(op_params, px),
        "V_probe_x": lambda: to_flat(svd.V(op_params, flat_x)),
        "Ut_probe_y": lambda: svd.Ut(op_params, py),
        "U_probe_y": lambda: svd.U(op_params, py),
    }
    names = {
        "probe_x": ("A_probe_x", "H_probe_x"),
        "At_probe_y": ("At_probe_y", "Ht_probe_y"),
        "pinv_probe_y": ("Apinv_probe_y", "Hpinv_probe_y"),
    }
    for key, fn in got.items():
        for name in names.get(key, (key,)):
            if name in fx:
                want = fx.arrays[name][0]
                scale = max(1.0, float(np.abs(want).max()))
                fx.check(name, np.asarray(fn()), rtol=1e-5, scale=scale, ref=want)
                fx.compared.add(name)


def _check(ok: bool, **info) -> dict:
    return {"pass": bool(ok), **info}


def _box_stats(cfg: dict, stored_mask, n_keys: int) -> dict:
    size = int(cfg.get("image_size", 256))
    lo, hi = (int(v) for v in cfg["mask_len_range"])
    mh, mw = (int(v) for v in cfg.get("margin", (16, 16)))  # mask_generator's default margin
    op = get_operator(
        "inpaint_box", image_shape=(size, size, 3), mask_len_range=(lo, hi), margin=(mh, mw)
    )

    def stats(key):
        p = op.sample(key)
        hole = p["mask"] == 0
        rows, cols = jnp.any(hole[..., 0], axis=1), jnp.any(hole[..., 0], axis=0)
        idx = jnp.arange(size)
        bbox = jnp.stack(
            [
                jnp.min(jnp.where(rows, idx, size)),
                jnp.min(jnp.where(cols, idx, size)),
                jnp.sum(rows),
                jnp.sum(cols),
            ]
        )
        same_channels = jnp.all(p["mask"] == p["mask"][..., :1])
        return p["box"], bbox, jnp.sum(hole[..., 0]), same_channels

    keys = jax.random.split(jax.random.key(0), n_keys)
    box, bbox, count, same = (np.asarray(a) for a in jax.lax.map(stats, keys, batch_size=64))
    top, left, h, w = box.T
    out = {
        "box_hole_size": _check(
            np.all((h >= lo) & (h < hi) & (w >= lo) & (w < hi)) and np.all(count == h * w),
            observed=[int(min(h.min(), w.min())), int(max(h.max(), w.max()))],
            allowed=[lo, hi - 1],
        ),
        "box_position": _check(
            np.all((top >= mh) & (top < size - mh - h) & (left >= mw) & (left < size - mw - w)),
            top=[int(top.min()), int(top.max())],
            left=[int(left.min()), int(left.max())],
            allowed=[[mh, size - mh - lo - 1], [mw, size - mw - lo - 1]],
        ),
        "box_mask_matches_box": _check(np.all(bbox == box) and np.all(same)),
    }
    if stored_mask is not None:  # the reference draw obeys the same constraints
        hole = np.asarray(stored_mask) == 0
        r, c = np.nonzero(np.any(hole, axis=1))[0], np.nonzero(np.any(hole, axis=0))[0]
        t, l, hh, ww = int(r[0]), int(c[0]), len(r), len(c)
        ok = lo <= hh < hi and lo <= ww < hi and int(hole.sum()) == hh * ww
        ok = ok and mh <= t < size - mh - hh and mw <= l < size - mw - ww
        out["box_reference_mask_in_range"] = _check(ok, box=[t, l, hh, ww])
    return out


def _random_stats(cfg: dict, stored_mask, n_keys: int) -> dict:
    size = int(cfg.get("image_size", 256))
    lo, hi = (float(v) for v in cfg["mask_prob_range"])
    op = get_operator("inpaint_random", image_shape=(size, size, 3), mask_prob_range=(lo, hi))
    n_pix = size * size

    def stats(key):
        p = op.sample(key)
        return p["p"], jnp.sum(p["mask"][..., 0] == 0), jnp.all(p["mask"] == p["mask"][..., :1])

    keys = jax.random.split(jax.random.key(1), n_keys)
    prob, zeros, same = (np.asarray(a) for a in jax.lax.map(stats, keys, batch_size=32))
    frac = zeros / n_pix
    want = np.floor(prob.astype(np.float64) * n_pix)
    mean_tol = 5 * (hi - lo) / np.sqrt(12 * n_keys)  # 5 sigma for the mean of U(lo, hi)
    out = {
        "random_fraction_in_range": _check(
            np.all((prob >= lo) & (prob <= hi) & (frac >= lo - 1 / n_pix) & (frac <= hi)),
            observed=[float(frac.min()), float(frac.max())],
            allowed=[lo, hi],
        ),
        "random_count_is_int_hw_p": _check(
            np.all(zeros == want) and np.all(same),
            max_count_error=float(np.abs(zeros - want).max()),
        ),
        "random_fraction_mean": _check(
            abs(frac.mean() - (lo + hi) / 2) <= mean_tol,
            mean=float(frac.mean()),
            expected=(lo + hi) / 2,
            tol=float(mean_tol),
        ),
    }
    if stored_mask is not None:
        z = int(np.sum(np.asarray(stored_mask) == 0))
        ok = np.floor(lo * n_pix) <= z <= np.floor(hi * n_pix)
        out["random_reference_mask_in_range"] = _check(ok, zero_fraction=z / n_pix)
    return out


def replay(npz_path, model_dir=None, n_keys: int = N_KEYS, blur_methods=("fft", "direct")) -> dict:
    """Recompute every stored operator output with jaxdiff.operators; see the module docstring.

    `n_keys` mask draws per statistic; `blur_methods` the 2-D correlation paths checked on the
    motion kernel ("direct" costs seconds on CPU for 61x61 kernels).
    """
    del model_dir  # operators need no model
    npz_path = pathlib.Path(npz_path)
    meta = sidecar(npz_path)
    cfg = meta.get("config", {})
    arrays: dict[str, dict] = {}
    with np.load(npz_path) as npz, jax.default_matmul_precision("highest"):
        names = set(npz.files)
        x = _images(npz, meta, npz_path)
        image_shape = x.shape[1:]

        if "gaussian" in cfg and {"gaussian_kernel", "gaussian_Ax"} & names:
            g = cfg["gaussian"]
            op = get_operator(
                "gaussian_blur",
                image_shape=image_shape,
                kernel_size=int(g["kernel_size"]),
                std=float(g["intensity"]),  # DPS calls the std "intensity"
            )
            params = op.sample(jax.random.key(0))
            if "gaussian_kernel" in names:
                arrays["gaussian_kernel"] = compare(
                    params["kernel"], npz["gaussian_kernel"], ATOL_TABLE
                )
            if "gaussian_Ax" in names:
                got = jax.jit(jax.vmap(op.apply, (None, 0)))(params, x)
                arrays["gaussian_Ax"] = compare(got, nchw_to_nhwc(npz["gaussian_Ax"]), ATOL_IMAGE)

        if {"motion_kernel", "motion_Ax"} <= names:
            kernel = npz["motion_kernel"]
            m = cfg.get("motion", {})
            if "kernel_size" in m and tuple(kernel.shape) != (int(m["kernel_size"]),) * 2:
                arrays["motion_kernel_shape"] = _check(False, shape=list(kernel.shape))
            for method in blur_methods:
                op = get_operator("blur", image_shape=image_shape, kernel=kernel, method=method)
                got = jax.jit(jax.vmap(op.apply, (None, 0)))(op.sample(jax.random.key(0)), x)
                arrays[f"motion_Ax_{method}"] = compare(
                    got, nchw_to_nhwc(npz["motion_Ax"]), ATOL_IMAGE
                )

        if "sr" in cfg and (
            {"sr_Ax", "sr_vjp_Ax_img0"} & names or "sr_resizer_dim2_weights" in names
        ):
            s = cfg["sr"]
            _, c, h, w = (int(v) for v in s["in_shape"])
            op = get_operator(
                "super_resolution", image_shape=(h, w, c), factor=int(s["scale_factor"])
            )
            for key, table in op.tables.items():
                name = f"sr_resizer_{key}"
                if name in names:
                    atol = 0.0 if "field_of_view" in key else ATOL_TABLE
                    arrays[name] = compare(table, npz[name], atol)
            if "sr_Ax" in names:
                got = jax.jit(jax.vmap(op.apply, (None, 0)))({}, x)
                arrays["sr_Ax"] = compare(got, nchw_to_nhwc(npz["sr_Ax"]), ATOL_IMAGE)
            if {"sr_Ax", "sr_vjp_Ax_img0"} <= names:
                y0 = jnp.asarray(nchw_to_nhwc(npz["sr_Ax"][0]))
                got = jax.jit(op.adjoint)({}, y0)
                want = nchw_to_nhwc(npz["sr_vjp_Ax_img0"][0])
                arrays["sr_adjoint_Ax_img0"] = compare(got, want, ATOL_IMAGE)

        if "box" in cfg:
            stored = npz["mask_box"] if "mask_box" in names else None
            arrays.update(_box_stats(cfg["box"], stored, n_keys))
        if "random" in cfg:
            stored = npz["mask_random"] if "mask_random" in names else None
            arrays.update(_random_stats(cfg["random"], stored, n_keys))

    if not arrays:
        arrays["nothing_compared"] = _check(False, arrays=sorted(names))
    return report(npz_path, "operators", arrays)


def reddiff_operator(fx: Fixture, deg: str, shape, b: int):
    """The official RED-diff / PiGDM H_function of `deg` (utils/degredations.py) from the stored
    pieces: (official_svd.OfficialOperator, op_params with a leading batch axis b or {} when
    shared, project_observed: the in2 branch). H_pinv passes a zero singular's coordinate
    through (pinv_zero="pass")."""
    import re

    from jaxdiff.operators import official_svd as off

    shape = tuple(shape)
    if deg.startswith("in2"):
        mask = fx.nhwc("mask").astype(np.float32)[:b]
        return off.OfficialOperator(off.OfficialMaskedInpainting(shape)), {"mask": mask}, True
    if deg.startswith("inp"):
        params = index_sets(fx, shape)
        n_kept = params["kept_indices"].shape[-1]
        svd = off.OfficialInpainting(shape, n_kept, interleaved=False, pinv_zero="pass")
        return off.OfficialOperator(svd), {k: v[:b] for k, v in params.items()}, False
    if deg == "deno":
        return off.OfficialOperator(off.OfficialDenoising(shape)), {}, False
    small = ("U_small", "V_small", "singulars_small")
    if deg == "color":  # torch.svd's basis of the grey row where stored, else numpy's
        pieces = [fx[k] if k in fx else None for k in small]
        return off.OfficialOperator(off.OfficialColorization(shape, *pieces)), {}, False
    m = re.fullmatch(r"sr(\d+)", deg)
    if not (deg.startswith("deblur") or m):
        raise ValueError(f"{fx.path}: no official RED-diff operator for deg {deg!r}")
    pieces = [fx[k] for k in small]
    if deg.startswith("deblur"):
        u, v, s = pieces
        svd = off.OfficialDeblurring(shape, u, v, s, fx["perm"], tiled=True, pinv_zero="pass")
        return off.OfficialOperator(svd), {}, False
    svd = off.OfficialSuperResolution(shape, int(m.group(1)), *pieces, pinv_zero="pass")
    return off.OfficialOperator(svd), {}, False
