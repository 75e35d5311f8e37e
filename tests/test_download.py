"""Model references: which are fetched from the hub first (with progress shown), and which never are."""

from __future__ import annotations

import pytest

from raylora import builtin
from raylora.errors import UserError
from raylora.train import download


def test_local_and_builtin_models_are_never_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said = []
    for ref in (builtin.TINY_MODEL, str(tmp_path), "./relative/folder", "/abs/folder"):
        download.ensure_local(ref, log=said.append)
    assert said == []
    assert download.is_hub_id("Qwen/Qwen3-VL-2B-Instruct") and not download.is_hub_id(str(tmp_path))


def test_an_uncached_hub_model_offline_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    said = []
    with pytest.raises(UserError, match=r"model.name_or_path: cannot download Qwen/Qwen3-VL-2B-Instruct"):
        download.ensure_local("Qwen/Qwen3-VL-2B-Instruct", log=said.append)
    assert said == ["downloading Qwen/Qwen3-VL-2B-Instruct into the Hugging Face cache ..."]
