"""`load_pretrained` on checkpoints not converted yet: an ADM .pt and a diffusers folder load
in memory to the very params and sidecar that converting then loading gives, with the
converter's checks and one log line saying how to convert once."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from convert_weights import cli
from jaxdiff.errors import CheckpointError
from jaxdiff.models import load_pretrained


def _converted(src, out, *extra):
    assert cli.main([str(src), "--out", str(out), "--quiet", *map(str, extra)]) == 0
    return load_pretrained(out)


def _same(a, b):
    fa = jax.tree_util.tree_leaves_with_path(a)
    fb = jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.mark.parametrize(
    "name",
    [pytest.param("adm_tiny.pt", marks=pytest.mark.slow), "diffusers_tiny"],  # adm: ~9 s
)
def test_unconverted_source_loads_as_converting_then_loading(fixtures_dir, tmp_path, caplog, name):
    src = fixtures_dir / name
    extra = ("--config", fixtures_dir / "adm_tiny.json") if name.endswith(".pt") else ()
    _, want_params, want_meta = _converted(src, tmp_path / "out", *extra)
    kwargs = {"config": extra[1]} if extra else {}
    with caplog.at_level(logging.WARNING):
        model, params, meta = load_pretrained(src, **kwargs)
    _same(params, want_params)
    for key in ("architecture", "model_config", "diffusion", "source", "num_parameters"):
        assert json.dumps(meta[key], sort_keys=True, default=list) == json.dumps(
            want_meta[key], sort_keys=True, default=list
        ), key
    lines = [r.getMessage() for r in caplog.records if "convert_weights" in r.getMessage()]
    assert len(lines) == 1 and f"python -m convert_weights {src}" in lines[0]
    x = np.zeros((1, 32, 32, 3), np.float32)
    assert model.apply({"params": params}, x, np.zeros((1,), np.int32)).shape[:3] == (1, 32, 32)


def test_unconverted_source_gets_the_converters_checks(fixtures_dir, tmp_path):
    with pytest.raises(ValueError, match="attention settings are not visible"):
        load_pretrained(fixtures_dir / "adm_tiny.pt")  # no config: the converter's own message
    bad = tmp_path / "bad"
    shutil.copytree(fixtures_dir / "diffusers_tiny", bad)
    from safetensors.numpy import load_file, save_file

    weights = bad / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(weights))
    first = sorted(sd)[0]
    sd[first] = np.full_like(sd[first], np.nan)
    save_file(sd, str(weights))
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_pretrained(bad)
    with pytest.raises(ValueError, match="preset/config apply only"):
        load_pretrained(tmp_path, preset="ffhq256")  # a folder that is neither
