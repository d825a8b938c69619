"""Run a step's typer command as ``python -m components.<step>``: one option set for both entry points.

``tessera <step> ...`` and ``python -m components.<step> ...`` (the form DVC, the containers and
Kubeflow run) parse the same typer options, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer


def run_command(command: Callable[..., Any], argv: list[str] | None, prog: str) -> None:
    """Parse ``argv`` (default: ``sys.argv[1:]``) with ``command``'s typer options and run it.

    Exits like any command line (``SystemExit`` with the command's exit code) only when the command
    fails or prints its help; returns normally on success, so tests and other code can call it.
    """
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(command)
    try:
        app(args=argv, prog_name=prog)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
