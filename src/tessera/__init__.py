"""Tessera: train, adapt and serve self-supervised vision models (MAE era).

The core library: data, corruptions, models, losses, training loops, adaptation, generators and
checkpoints. It imports no orchestrator, tracker or server (no prefect, kfp, mlflow or ts); those
live in ``components/``, ``flows/`` and ``serving/``.
"""

__version__ = "0.1.0"
