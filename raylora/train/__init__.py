"""One trial, in this process or on a Ray Train worker: the recipe and what it is built from.

recipe      train(spec, session): model → data → optimizer → loop → finish
session     the Session protocol the recipe talks through; LocalSession for ``raylora train``
model       base model (+ quantization), LoRA on the resolved scopes, optimizer groups
scopes      scope words → the model's real module names
data        records → encoded examples → batches
evaluate    eval loss and click accuracy
estimate    peak memory of a trial from its config alone
preflight   local model and data checked before anything starts
"""

from .recipe import Outcome, train
from .session import LocalSession, Session

__all__ = ["LocalSession", "Outcome", "Session", "train"]
