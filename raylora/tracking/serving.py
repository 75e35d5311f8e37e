"""The MLflow pyfunc model a promoted trial is served as: base model + LoRA adapter, one click per row.

``raylora promote`` logs :class:`LoraVisionModel` into the winning trial's MLflow run with the adapter as
its one artifact, as a model from code (``serving_model.py``; nothing is pickled) that carries raylora's
own code (``code_paths``) and pins only published libraries: it loads wherever MLflow rebuilds its
environment, raylora installed there or not. Models logged before raylora's subpackages import
``raylora.serving``, which re-exports this module.

Input: a DataFrame with columns ``image`` (a path to a screenshot on the serving machine) and
``instruction`` (text). Output: one generated string per row, e.g. ``"click(412, 230)"``.
Params: ``max_new_tokens`` (default 24).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd  # imported by mlflow.pyfunc anyway; MLflow reads predict's type hints at logging time

from .. import builtin
from ..train import data

ADAPTER_ARTIFACT = "adapter"
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
    from transformers import AutoModelForImageTextToText, AutoProcessor

    base = base_model_path(adapter_dir, base_model)
    processor = AutoProcessor.from_pretrained(base, revision=revision)
    model = AutoModelForImageTextToText.from_pretrained(base, revision=revision, dtype="auto")
    with warnings.catch_warnings():
        # PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing`; nothing a user can change.
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
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
        self.image_kw = data.image_kwargs(min_pixels, max_pixels, processor)

    @classmethod
    def load(cls, ref: str | Path, base_model: str | None = None, revision: str | None = None, **pixels):
        """From an adapter folder (``adapter_config.json``; a ``raylora train`` output or a checkpoint
        holding ``adapter/`` works too), or a base model alone (a hub id, a folder, ``builtin:...``)."""
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading is no progress worth a bar; downloads are fetched first
        adapter = adapter_folder(ref)
        if adapter is not None:
            return cls(*load_with_adapter(adapter, base_model, revision), **pixels)
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = builtin.resolve_model(str(ref))
        processor = AutoProcessor.from_pretrained(path, revision=revision)
        model = AutoModelForImageTextToText.from_pretrained(path, revision=revision, dtype="auto")
        return cls(model, processor, **pixels)

    def answer(self, messages: list[dict], images: list, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """The greedy continuation of a conversation (its images in order)."""
        import torch

        inputs = data.prompt_inputs(self.processor, messages, images, self.image_kw)
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        prompt_length = inputs["input_ids"].shape[1]
        return self.processor.tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)

    def click(self, image: Any, instruction: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """The answer to one instruction about one screenshot (a path or bytes)."""
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return self.answer(turn, [data.load_image(image)], max_new_tokens)


def adapter_folder(ref: str | Path) -> Path | None:
    """The PEFT adapter folder ``ref`` names (itself, or its ``adapter/``), or None for a base model."""
    path = Path(ref)
    for folder in (path, path / "adapter"):
        if (folder / "adapter_config.json").is_file():
            return folder
    return None


class LoraVisionModel(mlflow.pyfunc.PythonModel):
    """Qwen3-VL base + PEFT LoRA adapter, loaded with vanilla transformers/PEFT; greedy generation.

    ``model_config`` (set at logging time): ``base_model`` and ``base_model_revision`` from the trial's
    lineage tags, ``min_pixels``/``max_pixels`` from its spec so images are sized as in training.
    """

    def load_context(self, context) -> None:
        """Load the base model, the adapter from the model's ``adapter`` artifact, and the processor."""
        config = context.model_config or {}
        self.predictor = Predictor.load(
            context.artifacts[ADAPTER_ARTIFACT],
            config.get("base_model"),
            config.get("base_model_revision"),
            min_pixels=config.get("min_pixels"),
            max_pixels=config.get("max_pixels"),
        )

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        """One greedy answer per row of ``image`` + ``instruction``."""
        max_new_tokens = int((params or {}).get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        missing = {"image", "instruction"} - set(model_input.columns)
        if missing:
            raise ValueError(f"model input lacks column(s) {sorted(missing)}; expected image and instruction")
        rows = model_input[["image", "instruction"]].itertuples(index=False)
        return [self.predictor.click(image, instruction, max_new_tokens) for image, instruction in rows]


class RegisteredModel:
    """A logged or registered MLflow model (``models:/NAME@champion``, ``runs:/...``) answering through its
    own pyfunc, as a serving endpoint would."""

    def __init__(self, uri: str):
        self.model = mlflow.pyfunc.load_model(uri)

    def click(self, image: Any, instruction: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> str:
        """The model's answer to one instruction about one screenshot (a path)."""
        rows = pd.DataFrame({"image": [str(image)], "instruction": [instruction]})
        return self.model.predict(rows, params={"max_new_tokens": max_new_tokens})[0]


def open_model(ref: str, base_model: str | None = None, **pixels) -> Predictor | RegisteredModel:
    """What ``raylora predict`` answers with: an MLflow model URI, an adapter folder, or a base model."""
    if ref.startswith(("models:/", "runs:/")):
        return RegisteredModel(ref)
    return Predictor.load(ref, base_model, **pixels)


def answer_record(model: Predictor | RegisteredModel, record: data.Record, max_new_tokens: int) -> str:
    """The model's answer to a data record's prompt (its conversation up to the last assistant turn)."""
    if isinstance(model, Predictor):
        images = [data.load_image(ref) for ref in record.images]
        return model.answer(record.prompt_messages(), images, max_new_tokens)
    if len(record.images) != 1 or not isinstance(record.images[0], (str, Path)):
        raise ValueError(f"{record.where}: an MLflow model answers one screenshot given as a path")
    return model.click(record.images[0], record.instruction(), max_new_tokens)


def signature():
    """The pyfunc signature: string columns ``image`` and ``instruction`` in, strings out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "image"), ColSpec("string", "instruction")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )
