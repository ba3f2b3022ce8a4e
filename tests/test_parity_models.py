"""`python -m jaxdiff.parity <model>_io.npz`: the model forward fixtures replay through the same
command as the trajectories (the route used to name a module that did not exist)."""

import json
import shutil

import pytest

from jaxdiff.parity.__main__ import main, route


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


SLOW = pytest.mark.slow  # one more conversion and UNet compile


@pytest.mark.parametrize(
    "name, arrays",
    [
        ("adm_tiny_io.npz", {"out"}),
        pytest.param("diffusers_tiny_io.npz", {"out", "out_t0_for_all"}, marks=SLOW),
    ],
)
def test_io_fixture_replays_through_the_command(fixtures_dir, capsys, name, arrays):
    assert route(fixtures_dir / name) == "models"
    assert main([str(fixtures_dir / name)]) == 0
    (line,) = _lines(capsys)
    assert line["pass"] and line["kind"] == "model" and set(line["arrays"]) == arrays, line
    assert line["arrays"]["out"]["max_rel_err"] < 1e-5


def test_io_fixture_without_its_model_is_one_line_naming_it(fixtures_dir, tmp_path, capsys):
    npz = tmp_path / "adm_tiny_io.npz"
    shutil.copy(fixtures_dir / npz.name, npz)  # no adm_tiny.pt beside it
    assert main([str(npz)]) == 1
    (line,) = _lines(capsys)
    assert not line["pass"] and line["error"].startswith("FileNotFoundError: ")
    assert str(npz) in line["error"] and "--model" in line["error"]
