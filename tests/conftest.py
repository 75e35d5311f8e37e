"""Shared fixtures: one RAYLORA_HOME per test session, so the tiny model and data are built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def raylora_home(tmp_path_factory) -> Path:
    """Keep tests off the user's ~/.cache/raylora (CI may pin one with RAYLORA_HOME)."""
    home = Path(os.environ.get("RAYLORA_TEST_HOME") or tmp_path_factory.mktemp("raylora_home"))
    os.environ["RAYLORA_HOME"] = str(home)
    return home


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
