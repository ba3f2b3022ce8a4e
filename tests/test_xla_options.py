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
