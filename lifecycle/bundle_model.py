"""MLflow "models from code" entry for Tessera bundles: the model is built here, never unpickled.

MLflow copies this file into every bundle; loading the bundle runs it, which hands MLflow a
:class:`lifecycle.registry.CheckpointBundle` that rebuilds the model from the bundle's checkpoint.
"""

import mlflow.models

from lifecycle.registry import CheckpointBundle

mlflow.models.set_model(CheckpointBundle())
