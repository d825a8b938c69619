"""The steps' commands as ``tessera <step>`` runs them: the inputs a step cannot look up itself.

A step (``components/``) takes a data version and a checkpoint path; it never talks to DVC or MLflow.
Here, above the lifecycle adapters, ``tessera pretrain`` / ``train-generator`` / ``adapt`` read the
data version from ``dvc.lock`` (or hash a folder DVC does not track) when ``--data-version`` is not
given, and ``tessera embed`` / ``predict`` download a ``models:/NAME@alias`` to a local checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

F = Callable[..., Any]


def _data_dir(kwargs: dict[str, Any]) -> Path:
    """The step's ``--data``, or ``<data.root>/<data.name>`` of its params file (as the step does)."""
    if kwargs.get("data"):
        return Path(kwargs["data"])
    from components.command import data_folder
    from tessera.config import load_params

    return data_folder(load_params(kwargs.get("params") or "params.yaml", kwargs.get("preset")))


def with_data_version(command: F) -> F:
    """``command`` with ``--data-version`` filled from DVC's record of its ``--data`` folder (and
    torch threads chosen by ``tessera.threads``' rule, as ``python -m components.<step>`` does)."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from components.command import step_threads

        step_threads()
        if not kwargs.get("data_version"):
            from lifecycle import lineage

            kwargs["data_version"] = json.dumps(lineage.version_for(_data_dir(kwargs)))
        return command(**kwargs)

    return wrapper


def with_local_model(command: F) -> F:
    """``command`` with a ``--model models:/NAME@alias`` (or ``/VERSION``) downloaded to a local file."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from components.command import step_threads

        step_threads()
        with contextlib.ExitStack() as stack:
            if str(kwargs.get("model", "")).startswith("models:/"):
                from lifecycle.release import resolve

                tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="tessera-model-"))
                ref = resolve(kwargs["model"], tmp)
                kwargs["model_label"] = kwargs.get("model_label") or f"{kwargs['model']} (v{ref.version})"
                kwargs["model"] = str(ref.path)
            return command(**kwargs)

    return wrapper
