"""SVD forms of the operators (jaxdiff/operators/svd.py) and the official H_functions
(jaxdiff/operators/official_svd.py).

tests/fixtures/ddrm/svd_probes.npz holds, per DDRM fixture task (inp_box, sr4, deno,
deblur_gauss; the reference set's ddrm_<task>.npz), the operator probes, the op_* arrays and
image 0's x0 / y_clean under "<task>/<name>", and the PiGDM deblurring operator pieces
(pigdm_deblur_gauss_b1.npz: U_small, V_small, singulars_small, perm, singulars_used, x0,
y_clean, y, pinv_y, kernel, H_small) under "pigdm_deblur/<name>".
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.operators import get_operator
from jaxdiff.operators import official_svd as O
from jaxdiff.operators.svd import SeparableSVD

FIX = Path(__file__).parent / "fixtures" / "ddrm" / "svd_probes.npz"
SHAPE = (8, 12, 3)

SLOW = pytest.mark.slow
# the default run keeps one operator per SVD class; the rest are slow
OPERATORS = [
    pytest.param("denoise", {}, marks=SLOW),
    ("colorize", {}),
    pytest.param("colorize", {"weights": "bt601"}, marks=SLOW),
    pytest.param("inpaint", {"mask": (np.arange(8 * 12).reshape(8, 12) % 5 != 0)}, marks=SLOW),
    pytest.param("inpaint_box", {"mask_len_range": (2, 4), "margin": (1, 1)}, marks=SLOW),
    ("inpaint_random", {}),
    pytest.param("inpaint_random", {"per_channel": True}, marks=SLOW),
    ("super_resolution", {"factor": 4}),
    pytest.param("super_resolution", {"factor": 2, "method": "avg_pool"}, marks=SLOW),
    ("gaussian_blur", {"kernel_size": 5, "std": 1.0}),
    pytest.param("blur", {"kernel": np.outer([1.0, 2.0, 1.0], [1.0, 3.0, 1.0]) / 20.0}, marks=SLOW),
]


@pytest.fixture(scope="module")
def probes():
    with jax.default_matmul_precision("highest"):
        yield dict(np.load(FIX))


def _case(name, cfg, seed=0):
    op = get_operator(name, image_shape=SHAPE, **cfg)
    p = op.sample(jax.random.key(seed))
    x = jax.random.normal(jax.random.key(seed + 1), SHAPE)
    y = jax.random.normal(jax.random.key(seed + 2), op.output_shape())
    return op, p, x, y


def _quantities(op, p, x, y, v, u):
    """Everything the checks compare, in one jitted call (eager ops compile one by one)."""
    svd = op.svd
    hx = op.apply(p, x)
    xp = svd.H_pinv(p, y)
    return {
        "H": svd.H(p, x),
        "apply": hx,
        "Ht": svd.Ht(p, y),
        "adjoint": op.adjoint(p, y),
        "VtV": svd.Vt(p, svd.V(p, v)),
        "VVt": svd.V(p, svd.Vt(p, x)),
        "UtU": svd.Ut(p, svd.U(p, u)),
        "s": svd.singulars(p),
        "HHpHx": op.apply(p, svd.H_pinv(p, hx)),
        "xp": xp,
        "HpHxp": svd.H_pinv(p, op.apply(p, xp)),
        "coef": svd.Vt(p, xp),
    }


@pytest.mark.parametrize("name,cfg", OPERATORS)
def test_svd_matches_apply_and_adjoint(name, cfg):
    """H = apply, Ht = adjoint; V, U orthogonal (V^T V = I on R^D, U^T U = I on R^m, V V^T = I);
    H_pinv is Moore-Penrose: H H+ H = H, H+ H H+ = H+, H+ y has no null-space component."""
    with jax.default_matmul_precision("highest"):
        op, p, x, y = _case(name, cfg)
        svd = op.svd
        assert svd.y_shape == op.output_shape()
        v = jax.random.normal(jax.random.key(7), (svd.size,))
        u = jax.random.normal(jax.random.key(8), (svd.rank,))
        q = jax.jit(lambda p, x, y, v, u: _quantities(op, p, x, y, v, u))(p, x, y, v, u)
    q = {k: np.asarray(a) for k, a in q.items()}
    assert q["s"].shape == (svd.rank,) and np.all(q["s"] >= 0)
    np.testing.assert_allclose(q["H"], q["apply"], atol=2e-6)
    np.testing.assert_allclose(q["Ht"], q["adjoint"], atol=2e-6)
    np.testing.assert_allclose(q["VtV"], v, atol=2e-6)
    np.testing.assert_allclose(q["VVt"], x, atol=2e-6)
    np.testing.assert_allclose(q["UtU"], u, atol=2e-6)
    scale = float(np.abs(q["apply"]).max())
    np.testing.assert_allclose(q["HHpHx"], q["apply"], atol=1e-5 * scale)
    big = max(1.0, float(np.abs(q["xp"]).max()))
    np.testing.assert_allclose(q["HpHxp"], q["xp"], atol=1e-4 * big)
    null = np.concatenate([q["s"] == 0, np.ones(svd.size - svd.rank, bool)])
    np.testing.assert_allclose(q["coef"][null], 0.0, atol=1e-5 * big)


def test_svd_none_where_no_svd():
    shape = (16, 16, 3)
    assert get_operator("motion_blur", image_shape=shape, kernel_size=5).svd is None
    assert get_operator("phase_retrieval", image_shape=shape).svd is None
    rank2 = np.eye(3) + 0.1
    assert get_operator("blur", image_shape=shape, kernel=rank2).svd is None


def test_random_masks_vmap():
    """Per-image masks: vmapped H equals each image's own apply; ranks stay static."""
    op = get_operator("inpaint_box", image_shape=SHAPE, mask_len_range=(2, 4), margin=(1, 1))

    @jax.jit
    def run(keys, xs):
        ps = jax.vmap(op.sample)(keys)
        h = jax.vmap(op.svd.H)(ps, xs)
        return h, jax.vmap(op.apply)(ps, xs), jax.vmap(op.svd.H_pinv)(ps, h), ps["mask"]

    h, want, pin, masks = run(
        jax.random.split(jax.random.key(0), 3), jax.random.normal(jax.random.key(1), (3, *SHAPE))
    )
    np.testing.assert_array_equal(h, want)
    np.testing.assert_array_equal(pin, h)
    assert not np.array_equal(masks[0], masks[1])


def test_separable_rejects_bad_matrices():
    with pytest.raises(ValueError, match="SeparableSVD"):
        SeparableSVD((8, 8, 3), np.ones((9, 8)), np.ones((4, 8)))


def _official(probes, task, **kw):
    g = {k.split("/", 1)[1]: v for k, v in probes.items() if k.startswith(task + "/")}
    shape = (32, 32, 3)
    if task == "inp_box":
        p = O.inpainting_indices(g["op_mask"])
        np.testing.assert_array_equal(p["kept_indices"], g["op_kept_indices"])
        np.testing.assert_array_equal(p["missing_indices"], g["op_missing_indices"])
        return O.OfficialInpainting(shape, len(p["kept_indices"]), pinv_zero="divide"), p, g
    if task == "sr4":
        svd = O.OfficialSuperResolution(
            shape,
            int(g["op_ratio"]),
            g["op_U_small"],
            g["op_V_small"],
            g["op_singulars_small"],
            pinv_zero="divide",
        )
        return svd, {}, g
    if task == "deno":
        return O.OfficialDenoising(shape), {}, g
    np.testing.assert_array_equal(O.official_blur_matrix(g["op_kernel"], 32), g["op_H_small"])
    svd = O.OfficialDeblurring(
        shape, g["op_U_small"], g["op_V_small"], g["op_singulars_small"], g["op_perm"], **kw
    )
    return svd, {}, g


@pytest.mark.parametrize(
    "task",
    ["inp_box", pytest.param("sr4", marks=SLOW), pytest.param("deno", marks=SLOW), "deblur_gauss"],
)
def test_official_h_functions_reproduce_ddrm_probes(probes, task):
    with jax.default_matmul_precision("highest"):
        svd, p, g = _official(probes, task)
        img = O.from_flat(jnp.asarray(g["probe_x"][0]), svd.image_shape)
        py = jnp.asarray(g["probe_y"][0])
        np.testing.assert_array_equal(svd.singulars(p), g["singulars"])
        np.testing.assert_allclose(svd.H(p, img), g["H_probe_x"][0], atol=1e-6)
        np.testing.assert_allclose(O.to_flat(svd.Ht(p, py)), g["Ht_probe_y"][0], atol=1e-6)
        np.testing.assert_allclose(svd.Vt(p, img), g["Vt_probe_x"][0], atol=2e-6)
        v = jnp.asarray(g["probe_x"][0])
        np.testing.assert_allclose(O.to_flat(svd.V(p, v)), g["V_probe_x"][0], atol=2e-6)
        np.testing.assert_allclose(svd.Ut(p, py), g["Ut_probe_y"][0], atol=2e-6)
        np.testing.assert_allclose(svd.U(p, py), g["U_probe_y"][0], atol=2e-6)
        pinv = np.asarray(O.to_flat(svd.H_pinv(p, py)))
        want = g["Hpinv_probe_y"][0]
        np.testing.assert_array_equal(np.isfinite(pinv), np.isfinite(want))  # deblur: 1/0
        fin = np.isfinite(want)
        np.testing.assert_allclose(pinv[fin], want[fin], atol=2e-6)
        x0 = jnp.transpose(jnp.asarray(g["x0"][0]), (1, 2, 0))
        np.testing.assert_allclose(svd.H(p, x0), g["y_clean"][0], atol=1e-6)


def test_official_deblurring_defects(probes):
    """Tiled singulars make H differ from the (truncated, zero-padded) blur; interleaved pairing
    (tiled=False) is that blur up to the 3e-2 truncation; the project's blur is the default."""
    with jax.default_matmul_precision("highest"):
        tiled, _, g = _official(probes, "deblur_gauss")
        paired, _, _ = _official(probes, "deblur_gauss", tiled=False)
        x = jax.random.normal(jax.random.key(0), (32, 32, 3))
        hs = jnp.asarray(g["op_H_small"])
        blur = O.to_flat(jnp.einsum("ih,hwc,jw->ijc", hs, x, hs))
        assert float(jnp.abs(tiled.H({}, x) - blur).max()) > 0.1
        assert float(jnp.abs(paired.H({}, x) - blur).max()) < 0.03
        # the correct form: the project's blur with the same (full, reflect-padded) kernel
        k = np.asarray(g["op_kernel"], np.float64)
        op = get_operator("blur", image_shape=(32, 32, 3), kernel=np.outer(k, k))
        kp = op.sample(None)
        h, want = jax.jit(lambda x: (op.svd.H(kp, x), op.apply(kp, x)))(x)
        np.testing.assert_allclose(h, want, atol=2e-6)


@pytest.mark.slow
def test_official_pigdm_deblurring_pass_through_pinv(probes):
    """RED-diff / PiGDM utils/degredations.py: same Deblurring, H_pinv passes s = 0 through."""
    with jax.default_matmul_precision("highest"):
        g = {k.split("/", 1)[1]: v for k, v in probes.items() if k.startswith("pigdm_deblur/")}
        svd = O.OfficialDeblurring(
            (32, 32, 3),
            g["U_small"],
            g["V_small"],
            g["singulars_small"],
            g["perm"],
            pinv_zero="pass",
        )
        np.testing.assert_array_equal(svd.singulars({}), g["singulars_used"])
        x0 = jnp.transpose(jnp.asarray(g["x0"][0]), (1, 2, 0))
        np.testing.assert_allclose(svd.H({}, x0), g["y_clean"][0], atol=1e-6)
        pinv = O.to_flat(svd.H_pinv({}, jnp.asarray(g["y"][0])))
        want = g["pinv_y"][0].reshape(-1)
        np.testing.assert_allclose(pinv, want, atol=2e-6 * np.abs(want).max())


def test_official_operator_wrapper():
    svd = O.OfficialDenoising((8, 8, 3))
    op = O.OfficialOperator(svd)
    x = jax.random.normal(jax.random.key(0), (8, 8, 3))
    assert op.output_shape() == (192,)
    np.testing.assert_array_equal(op.apply({}, x), O.to_flat(x))
    with pytest.raises(ValueError, match="pinv_zero"):
        O.OfficialDenoising.__bases__[0]((8, 8, 3), (192,), 192, pinv_zero="nan")


def test_svd_first_built_inside_jit():
    """op.svd is built lazily in numpy, so first touching it inside a trace works."""
    x = jax.random.normal(jax.random.key(0), SHAPE)
    for name, cfg in (("gaussian_blur", {"kernel_size": 3}), ("colorize", {})):
        op = get_operator(name, image_shape=SHAPE, **cfg)
        p = op.sample(None)
        h, want = jax.jit(lambda x, op=op, p=p: (op.svd.H(p, x), op.apply(p, x)))(x)
        np.testing.assert_allclose(h, want, atol=2e-6)


def test_official_colorization_is_the_grey_row():
    """svd_replacement.Colorization: H(x) = the per-pixel row [0.3333, 0.3334, 0.3333], flat."""
    svd = O.OfficialColorization((4, 5, 3))
    op = get_operator("colorize", image_shape=(4, 5, 3), weights=O.OfficialColorization.ROW)
    x = jax.random.normal(jax.random.key(0), (4, 5, 3))
    v = jax.random.normal(jax.random.key(1), (60,))
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(svd.H({}, x), op.apply({}, x).reshape(-1), atol=1e-6)
        np.testing.assert_allclose(svd.Vt({}, svd.V({}, v)), v, atol=1e-6)
