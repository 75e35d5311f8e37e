"""Shared fixtures: one RAYLORA_HOME per test session, so the tiny model and data are built once."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]

# Property tests check rules, not speed: Hypothesis' default 200 ms deadline per example measured the
# machine's load instead (a first example that imports Ray's protobufs took 332 ms beside a Ray cluster on
# two cores, and test_pool failed about once in 45 runs). Performance lives in benchmarks/.
settings.register_profile("raylora", deadline=None)
settings.load_profile("raylora")


@pytest.fixture(scope="session", autouse=True)
def raylora_home(tmp_path_factory) -> Path:
    """Keep tests off the user's ~/.cache/raylora (CI may pin one with RAYLORA_HOME)."""
    home = Path(os.environ.get("RAYLORA_TEST_HOME") or tmp_path_factory.mktemp("raylora_home"))
    os.environ["RAYLORA_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def processor():
    """The built-in tiny Qwen3-VL's processor, loaded as a real checkpoint's is."""
    from raylora import builtin
    from raylora import spec as spec_lib
    from raylora.train import model

    spec = spec_lib.Spec()
    return model.load_processor(spec, builtin.resolve_model(spec.model.name_or_path))


@pytest.fixture(scope="session")
def train_file() -> Path:
    """The built-in synthetic GUI grounding training set (JSONL)."""
    from raylora import builtin

    return Path(builtin.resolve_data(builtin.GUI_DATA, "train"))


@pytest.fixture(scope="session")
def small_eval_file(tmp_path_factory) -> Path:
    """The built-in eval set's first 2 records (images by absolute path): a trial's final evaluation
    generates an answer for every eval record, which on CPU costs more than its training steps."""
    import json

    from raylora import builtin

    source = Path(builtin.resolve_data(builtin.GUI_DATA, "eval"))
    rows = [json.loads(line) for line in source.read_text().splitlines()[:2]]
    for row in rows:
        for turn in row["messages"]:
            for item in turn["content"] if isinstance(turn["content"], list) else []:
                if item.get("type") == "image":
                    item["image"] = str(source.parent / item["image"])
    path = tmp_path_factory.mktemp("small_eval") / "eval.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def built_once(tmp_path_factory) -> Callable[[str, Callable[[Path], None]], Path]:
    """``built_once(name, build)``: a folder that ``build`` fills once for the whole test session, whichever
    pytest-xdist worker asks first (the others wait for it). For a study many tests look at: a module
    fixture would run it again on each worker that runs one of those tests."""
    import fcntl

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own

    def once(name: str, build: Callable[[Path], None]) -> Path:
        folder = root / f"once-{name}"
        with open(root / f"once-{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (folder / ".built").is_file():  # a build that failed left no mark: build again
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                build(folder)
                (folder / ".built").touch()
        return folder

    return once


@pytest.fixture
def raylora_cli(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """``raylora_cli(*args)``: the ``raylora`` command's exit code, stdout and stderr, run in this process
    through its console entry point (a process of its own would import torch again, ~10 s on 2 CPUs).
    What the entry point sets for the whole process is undone after the test: ``sys.argv``, the standard
    streams (capsys), the warning format and the environment defaults."""
    import sys
    import warnings

    from raylora import cli, environment

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    for key, value in environment.CLI.items():
        if key not in os.environ:
            monkeypatch.setenv(key, value)  # set here, so that it is removed again after the test

    def run(*args: str) -> tuple[int, str, str]:
        ray = sys.modules.get("ray")
        # With Ray running in this process the entry point would end it and leave with os._exit.
        assert ray is None or not ray.is_initialized(), "raylora_cli with Ray initialized in this process"
        monkeypatch.setattr(sys, "argv", ["raylora", *args])
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def ray_tmpdir() -> Iterator[Path]:
    """A private Ray temp root (``RAY_TMPDIR``), short because Ray's socket paths live under it."""
    path = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
