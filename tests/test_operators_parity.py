"""Operator parity with the official PyTorch/numpy/PIL outputs (fixture README parts (d), (e))."""

from __future__ import annotations

import json
from math import pi

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from jaxdiff.operators import get_operator
from jaxdiff.operators.blur import gaussian_kernel
from jaxdiff.operators.motion import max_path_points, motion_path, render_motion_kernel
from jaxdiff.operators.resize import resizer_tables
from jaxdiff.parity.common import nchw_to_nhwc
from jaxdiff.parity.operators import replay


@pytest.fixture(autouse=True)
def _highest():
    with jax.default_matmul_precision("highest"):
        yield


def test_replay_operators_fixture(fixtures_dir):
    """256x256 photos: Gaussian 61/3.0, stored motion kernel, SR x4 and its adjoint, mask stats."""
    out = replay(fixtures_dir / "operators.npz", n_keys=64, blur_methods=("fft",))
    arrays = out["arrays"]
    assert out["pass"], json.dumps(arrays, indent=1)
    assert arrays["gaussian_kernel"]["max_abs_err"] == 0.0
    for name in ("gaussian_Ax", "motion_Ax_fft", "sr_Ax", "sr_adjoint_Ax_img0"):
        assert arrays[name]["max_abs_err"] <= 1e-5, name
    for name in ("sr_resizer_dim2_weights", "sr_resizer_dim3_field_of_view"):
        assert arrays[name]["max_abs_err"] == 0.0, name
    expected = {"box_hole_size", "box_position", "random_count_is_int_hw_p", "random_fraction_mean"}
    assert expected <= set(arrays)


def test_replay_reads_settings_from_sidecar(fixtures_dir, tmp_path):
    """A file with other settings is replayed with them (here: a wrong Gaussian std must fail)."""
    meta = json.loads((fixtures_dir / "operators.json").read_text())
    meta["config"]["gaussian"]["intensity"] = 2.0
    meta["config"].pop("box")
    meta["config"].pop("random")
    with np.load(fixtures_dir / "operators.npz") as npz:
        np.savez(tmp_path / "operators.npz", gaussian_kernel=npz["gaussian_kernel"])
    (tmp_path / "operators.json").write_text(json.dumps(meta))
    for name in ("op_image0_astronaut.png", "op_image1_coffee.png"):
        (tmp_path / name).write_bytes((fixtures_dir / name).read_bytes())
    out = replay(tmp_path / "operators.npz")
    assert not out["pass"] and set(out["arrays"]) == {"gaussian_kernel"}


def test_dps_32px_operators(fixtures_dir):
    """The 32x32 DPS fixtures: 9x9 Gaussian with reflected tails, box mask, Resizer 32 -> 16."""
    d = np.load(fixtures_dir / "dps_operator_arrays.npz")
    x = nchw_to_nhwc(d["x0"])
    shape = x.shape[1:]

    kernel = d["gaussian_blur_kernel"]
    np.testing.assert_array_equal(gaussian_kernel(9, 3.0), kernel)
    assert kernel[0, 0] > 0.0  # tails folded back, not a truncated Gaussian
    want = nchw_to_nhwc(d["gaussian_blur_y_clean"])
    ops = [get_operator("gaussian_blur", image_shape=shape, kernel_size=9, std=3.0)]
    ops += [
        get_operator("blur", image_shape=shape, kernel=kernel, method=m) for m in ("direct", "fft")
    ]
    for op in ops:
        got = jax.vmap(op.apply, (None, 0))(op.sample(jax.random.key(0)), x)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)

    op = get_operator("inpaint", image_shape=shape, mask=d["inpaint_box_mask"][0, 0])
    got = jax.vmap(op.apply, (None, 0))(op.sample(jax.random.key(0)), x)
    np.testing.assert_array_equal(got, nchw_to_nhwc(d["inpaint_box_y_clean"]))

    op = get_operator("super_resolution", image_shape=shape, factor=2)
    for dim in (2, 3):
        w, fov = resizer_tables(32, 2)
        np.testing.assert_array_equal(w, d[f"super_resolution_resizer_dim{dim}_weights"])
        np.testing.assert_array_equal(fov, d[f"super_resolution_resizer_dim{dim}_field_of_view"])
    got = jax.vmap(op.apply, (None, 0))({}, x)
    np.testing.assert_allclose(got, nchw_to_nhwc(d["super_resolution_y_clean"]), atol=1e-6)


# --- motion blur: the reference construction, rebuilt with numpy's global RNG and PIL ----------
def _mb_path(size: int, intensity: float, rng) -> np.ndarray:
    """LeviBorodenko/motionblur Kernel._createPath, draw for draw (numpy RandomState)."""
    big = 2 * size
    diag = (2 * big**2) ** 0.5
    max_len = 0.75 * diag * (rng.uniform() + rng.uniform(0, intensity**2))
    steps = []
    while sum(steps) < max_len:
        step = rng.beta(1, 30) * (1 - intensity + 0.1) * diag
        if step < max_len:
            steps.append(step)
    max_angle = rng.uniform(0, intensity * pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(low=-max_angle, high=max_angle)]
    while len(angles) < len(steps):
        angle = rng.triangular(0, intensity * max_angle, max_angle + 0.1)
        angle *= -np.sign(angles[-1]) if rng.uniform() < jitter else np.sign(angles[-1])
        angles.append(angle)
    path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    path = (path - sum(path) / len(steps)) * np.exp(1j * rng.uniform(0, pi))
    return path + (big + 1j * big) / 2


def _pil_kernel(path: np.ndarray, size: int) -> np.ndarray:
    """Kernel._createKernel + kernelMatrix: PIL line, GaussianBlur, LANCZOS, 'L', sum 1."""
    big = 2 * size
    diag = (2 * big**2) ** 0.5
    img = Image.new("RGB", (big, big))
    ImageDraw.Draw(img).line(xy=[(p.real, p.imag) for p in path], width=int(diag / 150))
    img = img.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01)))
    k = np.asarray(img.resize((size, size), resample=Image.LANCZOS).convert("L"), np.float32)
    return k / k.sum()


def test_motion_renderer_matches_pil_on_reference_paths(fixtures_dir):
    """np.random.seed(0); the 2nd kernel drawn is the fixture's (DPS draws two). Rendering the
    same paths with jaxdiff's JAX renderer gives PIL's kernels to float32 rounding."""
    stored = np.load(fixtures_dir / "operators.npz")["motion_kernel"]
    rng = np.random.RandomState(0)
    paths = [_mb_path(61, 0.5, rng) for _ in range(4)]
    np.testing.assert_array_equal(_pil_kernel(paths[1], 61), stored)

    m = max_path_points(61, 0.5)
    render = jax.jit(lambda p, n: render_motion_kernel(p, n, 61))
    for i, path in enumerate(paths):
        padded = np.zeros(m, np.complex64)
        padded[: len(path)] = path
        got = np.asarray(render(jnp.asarray(padded), len(path)))
        want = stored if i == 1 else _pil_kernel(path, 61)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)


def test_motion_paths_match_reference_statistics():
    """JAX-drawn paths vs the numpy/MB sampler: point count and extent agree in distribution."""
    n_draws = 400
    rng = np.random.RandomState(7)
    ref = [_mb_path(61, 0.5, rng) for _ in range(n_draws)]
    ref_n = np.array([len(p) for p in ref])
    ref_extent = np.array([np.abs(p - (61 + 61j)).max() for p in ref])

    keys = jax.random.split(jax.random.key(7), n_draws)
    paths, n = jax.jit(jax.vmap(lambda k: motion_path(k, 61, 0.5)))(keys)
    paths, n = np.asarray(paths), np.asarray(n)
    assert n.min() >= 2 and n.max() < max_path_points(61, 0.5)
    extent = np.array([np.abs(p[:k] - (61 + 61j)).max() for p, k in zip(paths, n)])

    for ours, theirs in ((n, ref_n), (extent, ref_extent)):
        se = np.sqrt(ours.var() / n_draws + theirs.var() / n_draws)
        assert abs(ours.mean() - theirs.mean()) < 4 * se, (ours.mean(), theirs.mean())
        assert 0.8 < ours.std() / theirs.std() < 1.25
