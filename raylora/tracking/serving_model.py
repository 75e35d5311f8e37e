"""The file ``raylora promote`` logs as an MLflow model from code: loading it builds the serving model.

MLflow stores this file with the model and runs it at load time instead of unpickling an object; the
model's own copy of raylora (its ``code/`` folder, first on ``sys.path``) provides
:class:`raylora.tracking.serving.LoraVisionModel`.
"""

import mlflow.models

from raylora.tracking.serving import LoraVisionModel

mlflow.models.set_model(LoraVisionModel())
