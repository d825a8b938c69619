"""Compatibility shim: every bundle registered before the lifecycle adapters left ``components/``
loads through ``from components.registry import CheckpointBundle`` (its copy of ``bundle_model.py``).

The import points up (a step module naming an adapter), so the import contracts exempt this one
module by name (``pyproject.toml``, ``[tool.importlinter]``). New code imports ``lifecycle.registry``.
"""

from lifecycle.registry import CheckpointBundle

__all__ = ["CheckpointBundle"]
