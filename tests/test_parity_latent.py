"""The latent replay's engine (jaxdiff/parity/latent.py) with stand-in stages: each array judged by
its own rule, a failing stage reported without stopping the others, the classes found from the
sidecar. The networks' own parity is in test_models_sd.py and test_convert_latent.py."""

import json

import numpy as np
import pytest

from jaxdiff.parity import latent
from tests.conftest import FIXTURES

NPZ = FIXTURES / "latent" / "latent.npz"


def test_rules():
    net = latent.Rule(1e-5)
    assert net.describe() == "1e-05 * max(1, max|ref|)"
    assert net.atol(np.array([0.5, -0.2])) == 1e-5  # the floor of 1
    assert net.atol(np.array([-3.0])) == pytest.approx(3e-5)
    ref = np.array([1.0, -3.0])
    assert net.check(ref + 2.9e-5, ref)["pass"]
    assert not net.check(ref + 3.1e-5, ref)["pass"]
    assert not net.check(ref[:1], ref)["pass"]
    exact = latent.EXACT.check(np.array([1, 2, 4]), np.array([1, 2, 3]))
    assert exact == {"mismatches": 1, "pass": False, "rule": "exact"}


def test_replay_judges_each_array_and_keeps_going():
    def echo(arrays, models, dtype):  # the reference itself, and a copy off by 2e-5
        return {"vae_mean": arrays["vae_mean"], "vae_z": arrays["vae_z"] + 2e-5}

    def broken(arrays, models, dtype):
        return {"unet_out": models.get("NoSuchModel")}

    stages = [
        latent.Stage("a", (), {"vae_mean": latent.NETWORK, "vae_z": latent.NETWORK}, echo),
        latent.Stage("b", (), {"unet_out": latent.NETWORK}, broken),
        latent.Stage("c", (), {"not_in_fixture": latent.EXACT}, echo),  # skipped
    ]
    result = latent.replay(NPZ, stages=stages)
    assert not result["pass"] and result["kind"] == "latent"
    assert set(result["arrays"]) == {"vae_mean", "vae_z", "unet_out"}
    assert result["arrays"]["vae_mean"]["pass"] and result["arrays"]["vae_mean"]["max_abs_err"] == 0
    assert not result["arrays"]["vae_z"]["pass"]  # 2e-5 > 1e-5 * max(1, 0.059)
    assert (
        "b: FileNotFoundError: no NoSuchModel beside the fixture"
        in (result["arrays"]["unet_out"]["error"])
    )


def test_classes_found_from_the_sidecar():
    meta = json.loads(NPZ.with_suffix(".json").read_text())
    found = latent.component_folders(NPZ, meta)
    assert found["UNet2DConditionModel"] == FIXTURES / "latent" / "sd_tiny" / "unet"
    assert found["AutoencoderKL"] == FIXTURES / "latent" / "sd_tiny" / "vae"
    assert found["VQModel"] == FIXTURES / "latent" / "vq_tiny"
    assert found["DDIMScheduler"] == FIXTURES / "latent" / "sd_tiny" / "scheduler"
