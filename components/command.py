"""What every step shares: its ``python -m components.<step>`` entry point and the data version it is given.

``tessera <step> ...`` and ``python -m components.<step> ...`` (the form DVC, the containers and
Kubeflow run) parse the same typer options, so the two cannot drift apart.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer


def run_command(command: Callable[..., Any], argv: list[str] | None, prog: str) -> None:
    """Parse ``argv`` (default: ``sys.argv[1:]``) with ``command``'s typer options and run it.

    Exits like any command line (``SystemExit`` with the command's exit code) only when the command
    fails or prints its help; returns normally on success, so tests and other code can call it.
    The command runs with :func:`step_threads` applied first (not for ``--help`` or a parse error).
    """

    @functools.wraps(command)
    def with_threads(*args: Any, **kwargs: Any) -> Any:
        step_threads()
        return command(*args, **kwargs)

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(with_threads)
    try:
        app(args=argv, prog_name=prog)
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def step_threads() -> int | None:
    """Set a step's torch threads by ``tessera.threads``' rule; returns them, or None when left alone.

    ``OMP_NUM_THREADS`` set (by a person, or ``torchrun`` for several processes) is left as torch read
    it, unless ``TESSERA_TORCH_THREADS`` is set too (the override wins everywhere). Under ``torchrun``
    the processes on this machine (``LOCAL_WORLD_SIZE``) share its cores. Never raises.
    """
    from tessera import threads

    if os.environ.get("OMP_NUM_THREADS", "").strip() and threads.override_from_env() is None:
        return None
    try:
        sharers = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    except ValueError:
        sharers = 1
    return threads.apply(sharers)


DATA_VERSION_HELP = (
    "data version of --data: JSON {md5, files, size}, a JSON file or a bare md5 "
    "(`tessera <step>` reads it from dvc.lock when omitted)"
)


def parse_data_version(given: str | Mapping[str, Any] | None, step: str) -> dict[str, Any]:
    """The data version a step stamps in its checkpoint: a dict, JSON text, a JSON file or an md5.

    A step never computes it (that is the lifecycle adapters' job, done once per run): the flow passes
    the one its data check computed, ``tessera <step>`` reads it from ``dvc.lock``, Kubeflow passes a
    pipeline parameter. Without one the step refuses to run rather than write an unversioned model.
    """
    from tessera.errors import DataError

    if isinstance(given, Mapping):
        value: Any = dict(given)
    elif given and str(given).strip():
        text = str(given).strip()
        path = Path(text)
        if len(text) < 4096 and path.is_file():
            text = path.read_text().strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = {"md5": text}
        value = value if isinstance(value, dict) else {"md5": str(value)}
    else:
        raise DataError(
            f"{step}: no data version given: pass --data-version (JSON, a file or the DVC md5), or run "
            f"`tessera {step}` (it reads dvc.lock) or the retrain flow (its data check computes it)"
        )
    if not str(value.get("md5") or "").strip():
        raise DataError(f"{step}: the data version {value!r} has no md5")
    return value


def data_folder(params: Mapping[str, Any]) -> Path:
    """``<data.root>/<data.name>`` of a params dict: where every step finds the data set by default."""
    from tessera.errors import ConfigError

    section = params.get("data") or {}
    if not section.get("name"):
        raise ConfigError("no --data given and no data.name in params: pass --data DIR")
    return Path(section.get("root") or "data") / str(section["name"])
