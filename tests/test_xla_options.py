"""The per-backend XLA compiler options (jaxdiff/xla_options.py): the switch, the environment, and
ShardedBatch compiling with them."""

import jax
import numpy as np
import pytest

from jaxdiff import xla_options
from jaxdiff.sharding import ShardedBatch


@pytest.fixture
def switch(monkeypatch):
    monkeypatch.delenv(xla_options.ENV, raising=False)
    monkeypatch.setattr(xla_options, "USE_LIBRARY_FUSIONS", None)
    return monkeypatch


def _conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def test_auto_turns_library_fusions_off_on_cpu_only(switch):
    assert not xla_options.library_fusions_enabled("cpu")
    assert xla_options.library_fusions_enabled("gpu")
    assert xla_options.compiler_options("gpu") is None
    switch.setenv(xla_options.ENV, "on")
    assert xla_options.library_fusions_enabled("cpu")
    assert xla_options.compiler_options("cpu") is None
    switch.setenv(xla_options.ENV, "off")
    assert not xla_options.library_fusions_enabled("gpu")
    switch.setattr(xla_options, "USE_LIBRARY_FUSIONS", True)  # the module switch wins
    assert xla_options.library_fusions_enabled("cpu")


def test_bad_environment_value_is_one_clear_error(switch):
    switch.setenv(xla_options.ENV, "sometimes")
    with pytest.raises(ValueError, match="JAXDIFF_XLA_LIBRARY_FUSIONS='sometimes'"):
        xla_options.library_fusions_enabled("cpu")


def test_off_compiles_without_library_fusions_and_changes_no_number(switch):
    if not xla_options._cpu_accepts_off():
        pytest.skip("this jaxlib's XLA:CPU has no library-fusion option")
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16)) / 12
    lowered = jax.jit(_conv).lower(x, w)
    off = xla_options.compile_lowered(lowered)
    assert "ynn" not in off.as_text()
    switch.setattr(xla_options, "USE_LIBRARY_FUSIONS", True)
    on = xla_options.compile_lowered(lowered)
    np.testing.assert_allclose(np.asarray(off(x, w)), np.asarray(on(x, w)), rtol=1e-5, atol=1e-5)


def test_sharded_batch_compiles_with_the_options_and_keys_them(switch):
    if not xla_options._cpu_accepts_off():
        pytest.skip("this jaxlib's XLA:CPU has no library-fusion option")
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4)) / 6

    def fn(same, per_image, valid):
        return _conv(per_image, same)

    batch = ShardedBatch(fn, batch_size=jax.device_count())
    x = np.ones((1, 8, 8, 4), np.float32)
    batch(w, x)
    (program,) = batch._compiled.values()
    assert "ynn" not in program.as_text()
    switch.setattr(xla_options, "USE_LIBRARY_FUSIONS", True)
    batch(w, x)  # another choice is another program, not the one compiled without them
    assert len(batch._compiled) == 2


# Random123's known-answer vectors for Threefry-2x32, 20 rounds (key, counter -> output).
THREEFRY_KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

_DRAWS = """
import jax, numpy as np
k = jax.random.PRNGKey(7)
f = jax.jit(lambda k: (jax.random.normal(k, (257,)), jax.random.split(k, 5),
                       jax.random.randint(k, (9,), 0, 1000), jax.random.fold_in(k, 3),
                       jax.vmap(lambda q: jax.random.uniform(q, (4,)))(jax.random.split(k, 3))))
print(",".join(np.asarray(a).tobytes().hex() for a in jax.tree.leaves(f(k))))
"""


def test_straight_line_threefry_gives_the_same_bits_in_one_kernel(tmp_path):
    import subprocess
    import sys

    # JAX's own CPU lowering, in a fresh process (the switch below is process-wide)
    ref = subprocess.run(
        [sys.executable, "-c", _DRAWS], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert xla_options.straight_line_threefry()
    from jax.extend.random import threefry_2x32

    for key, count, want in THREEFRY_KAT:
        got = jax.jit(threefry_2x32)(np.array(key, np.uint32), np.array(count, np.uint32))
        assert tuple(int(v) for v in np.asarray(got)) == want
    scope = {}
    exec(_DRAWS.replace("print(", "out = ("), scope)
    assert scope["out"] == ref
    program = jax.jit(lambda k: jax.random.normal(k, (64,))).lower(jax.random.PRNGKey(1))
    assert "while" not in program.compile().as_text()  # JAX's CPU lowering is a while loop


def test_backend_optimization_level_holds_in_its_block_and_yields_to_xla_flags(switch):
    switch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert "xla_backend_optimization_level" not in (xla_options.compiler_options("cpu") or {})
    with xla_options.backend_optimization_level(1):
        assert xla_options.compiler_options("cpu")["xla_backend_optimization_level"] == 1
        assert xla_options.compiler_options("gpu") is None  # an XLA:CPU choice only
        x, w = np.ones((1, 4, 4, 2), np.float32), np.ones((3, 3, 2, 2), np.float32)
        program = xla_options.compile_lowered(jax.jit(_conv).lower(x, w))  # XLA takes it
        assert np.asarray(program(x, w)).max() == 18  # 3x3 taps x 2 channels of ones
    assert "xla_backend_optimization_level" not in (xla_options.compiler_options("cpu") or {})
    switch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")  # the user's flag wins
    with xla_options.backend_optimization_level(3):
        assert "xla_backend_optimization_level" not in (xla_options.compiler_options("cpu") or {})
    for bad in (4, -1, True, "1", 1.0):
        with pytest.raises(ValueError, match="optimisation level must be 0, 1, 2 or 3"):
            xla_options.check_optimization_level(bad)
