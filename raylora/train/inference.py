"""A model ready to answer: a base model (+ a LoRA adapter), its processor, greedy generation.

What ``raylora predict`` and ``raylora eval``, the base-model score of a study and the promoted MLflow model
all answer with, so every path answers the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import builtin
from ..data import samples
from . import encode

DEFAULT_MAX_NEW_TOKENS = 24


def base_model_path(adapter_dir: str | Path, base_model: str | None = None) -> str:
    """Where to load the adapter's base model from.

    The adapter's own ``base_model_name_or_path`` when that is a folder on this machine; otherwise the
    trial's ``raylora.base_model`` reference (``builtin:...`` is rebuilt under ``$RAYLORA_HOME``, a hub id
    is returned as is), falling back to the adapter's value (a hub id).
    """
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    recorded = config.get("base_model_name_or_path")
    if recorded and Path(recorded).is_dir():
        return recorded
    if base_model:
        return builtin.resolve_model(base_model)
    if not recorded:
        raise ValueError(f"{adapter_dir}/adapter_config.json names no base model and none was given")
    return recorded


def load_with_adapter(adapter_dir: str | Path, base_model: str | None = None, revision: str | None = None):
    """``(PeftModel, processor)``: the base (see :func:`base_model_path`) with the adapter, vanilla PEFT."""
    from ..train import quantization

    quantization.import_quietly()  # PEFT imports bitsandbytes
    from peft import PeftModel
    from transformers import AutoProcessor

    from . import model as model_lib

    base = base_model_path(adapter_dir, base_model)
    processor = AutoProcessor.from_pretrained(base, revision=revision)
    model = model_lib.from_pretrained(base, revision=revision, dtype="auto")
    with model_lib.peft_quietly():
        return PeftModel.from_pretrained(model, str(adapter_dir)), processor


class Predictor:
    """A model ready to answer: base (+ LoRA adapter), processor, greedy generation. Shared by the MLflow
    pyfunc and ``raylora predict``, so both answer the same way."""

    def __init__(self, model, processor, min_pixels: int | None = None, max_pixels: int | None = None):
        import torch

        from ..train import model as model_lib

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.processor = model.to(self.device).eval(), processor
        model_lib.align_generation(self.model.generation_config, processor.tokenizer)
        self.image_kw = encode.image_kwargs(min_pixels, max_pixels, processor)

    @classmethod
    def load(cls, ref: str | Path, base_model: str | None = None, revision: str | None = None, **pixels):
        """From an adapter folder (``adapter_config.json``; a ``raylora train`` output or a checkpoint
        holding ``adapter/`` works too), or a base model alone (a hub id, a folder, ``builtin:...``)."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading is no progress worth a bar; downloads are fetched first
        adapter = adapter_folder(ref)
        if adapter is not None:
            return cls(*load_with_adapter(adapter, base_model, revision), **pixels)
        from transformers import AutoProcessor

        from . import model as model_lib

        path = builtin.resolve_model(str(ref))
        processor = AutoProcessor.from_pretrained(path, revision=revision)
        model = model_lib.from_pretrained(path, revision=revision, dtype="auto")
        return cls(model, processor, **pixels)

    def answer(self, messages: list[dict], images: list, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """The greedy continuation of a conversation (its images in order)."""
        import torch

        inputs = encode.prompt_inputs(self.processor, messages, images, self.image_kw)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        prompt_length = inputs["input_ids"].shape[1]
        return self.processor.tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)

    def click(self, image: Any, instruction: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """The answer to one instruction about one screenshot (a path or bytes)."""
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.answer(turn, [samples.load_image(image)], max_new_tokens)


def adapter_folder(ref: str | Path) -> Path | None:
    """The PEFT adapter folder ``ref`` names (itself, or its ``adapter/``), or None for a base model."""
    path = Path(ref)
    for folder in (path, path / "adapter"):
        if (folder / "adapter_config.json").is_file():
            return folder
    return None
