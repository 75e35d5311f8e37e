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

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd  # imported by mlflow.pyfunc anyway; MLflow reads predict's type hints at logging time

from ..data import samples
from ..train.inference import DEFAULT_MAX_NEW_TOKENS, Predictor

ADAPTER_ARTIFACT = "adapter"


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


def answer_record(model: Predictor | RegisteredModel, record: samples.Sample, max_new_tokens: int) -> str:
    """The model's answer to a data record's prompt (its conversation up to the last assistant turn)."""
    if isinstance(model, Predictor):
        images = [samples.load_image(ref) for ref in record.images]
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
