"""What to run: the study spec's schema, its dotted paths, YAML loading and the search space.

Never imports torch: ``raylora validate`` and the search driver read specs without it. ::

    spec = raylora.spec.load("search_spaces/quickstart.yaml", ["training.lora.r=32"])
    concrete = spec.with_values({"training.lora.scope": ["llm", "vision"]})

    load       YAML with line numbers, --set overrides, validation
    schema     the strict, typed sections and the rules that span them
    paths      the dotted-path language (training.lora.r)
    space      spec.search → distributions → Optuna's define-by-run function
    metrics    the metrics every trial reports, and which direction is better
    yamltext   YAML text → data, remembering each key's line
    starters   the starter specs ``raylora init`` writes
"""

from .load import build, load
from .schema import Spec

__all__ = ["Spec", "build", "load"]
