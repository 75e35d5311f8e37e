"""One trial, in this process or on a Ray Train worker: the recipe and what it is built from.

recipe         train(spec, session): model → data → optimizer → loop → finish
session        the Session protocol the recipe talks through; LocalSession for ``raylora train``
model          base model (+ quantization), LoRA on the resolved scopes, optimizer groups
scopes         scope words → the model's real module names
quantization   bitsandbytes: the 4-bit config, what it quantizes, its quiet import
sharding       FSDP2 across a trial's workers
init_adapter   training.init_adapter: start from an earlier study's adapter
encode         samples → token ids, masked labels, pixel values; batches
loader         the DataLoader: samples read once, screenshots decoded per batch, a cached length index
evaluate       eval loss, and GUI metrics from batched greedy generation
inference      a model ready to answer (base + adapter): predict, eval and the base-model score
cost           what a trial costs: peak memory, accelerator-hours, tokens/s
estimate       peak memory of a trial from its config alone
preflight      local model and data checked before anything starts
download       a hub checkpoint fetched before anything loads it
data_inspect   ``raylora data inspect``: how a dataset is read, before compute is spent
faults         fault injection for tests (never set in normal use)
"""

from .recipe import TrainResult, train
from .session import LocalSession, Session

__all__ = ["LocalSession", "TrainResult", "Session", "train"]
