"""Test setup: emulate 8 CPU devices (for the sharding tests) before JAX is imported."""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

# LLVM's optimisations off (XLA's own HLO passes still run): compiling is most of a test's cost
# on these tiny models, and this cuts a parity test's wall time by about a fifth. The default
# build's numerics are what `python -m jaxdiff.parity` replays (docs/DESIGN.md, own_level).
if "xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
