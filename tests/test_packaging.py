"""What a `pip install raylora` user gets: the wheel carries the starter specs and `raylora init` works
from an empty folder, with nothing from this checkout on the path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, ROOT],
        check=True,
        capture_output=True,
    )
    (found,) = out.glob("raylora-*.whl")
    return found


@pytest.mark.slow
def test_wheel_carries_the_starter_specs_and_init_works_from_it(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    for starter in ("quickstart", "scope_study", "qlora_budget"):
        assert f"raylora/search_spaces/{starter}.yaml" in names, names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    empty = tmp_path / "empty"
    empty.mkdir()
    # The unpacked wheel comes first on the path: this checkout's raylora is not what runs.
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    code = (
        "import raylora, sys; print(raylora.__file__); "
        "from raylora.cli import main; sys.argv[0] = 'raylora'; main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "init", "qlora_budget"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(str(site)), proc.stdout
    written = empty / "qlora_budget.yaml"
    assert written.read_text() == (ROOT / "search_spaces" / "qlora_budget.yaml").read_text()
    again = subprocess.run(
        [sys.executable, "-c", code, "validate", "qlora_budget.yaml"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr


def test_every_subpackage_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "raylora").rglob("__init__.py")}
    assert on_disk | {"raylora.search_spaces"} == listed
