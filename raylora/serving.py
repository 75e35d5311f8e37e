"""The import path MLflow models promoted by earlier raylora versions load their code from.

The serving model now lives in :mod:`raylora.tracking.serving`; this module keeps ``raylora.serving`` working.
"""

from .tracking.serving import ADAPTER_ARTIFACT, LoraVisionModel
from .train.inference import base_model_path, load_with_adapter

__all__ = ["ADAPTER_ARTIFACT", "LoraVisionModel", "base_model_path", "load_with_adapter"]
