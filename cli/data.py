"""``tessera data``: the data step's commands, each followed by the DVC data version of what it wrote.

The step (``components/data.py``) builds, imports and corrupts; it never talks to DVC. Here, one
layer up, ``tessera data version PATH`` prints the data version (the md5 of ``dvc.lock`` / ``.dvc``)
and, with ``--check``, refuses data changed since it was versioned.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from components import data as step

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Build, import, corrupt and version image data sets.",
)


def _then_print_version(command: Callable[..., Path]) -> Callable[..., Path]:
    """Run the step's command, then print the data version of the folder it returns."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Path:
        from lifecycle import lineage
        from tessera.errors import TesseraError

        folder = command(*args, **kwargs)
        try:
            typer.echo(f"data version: {json.dumps(lineage.data_version(folder))}")
        except TesseraError as e:  # the data is written; only the summary line is missing
            typer.echo(f"data version: unavailable ({e})")
        return folder

    return wrapper


app.command("build")(_then_print_version(step.build_cli))
app.command("import")(_then_print_version(step.import_cli))
app.command("corrupt")(_then_print_version(step.corrupt_cli))


@app.command("version")
@step.friendly
def version_cli(
    path: Path = typer.Argument(..., help="a data folder, e.g. data/digits"),
    check: bool = typer.Option(False, "--check", help="fail, naming files, if it changed since versioned"),
) -> None:
    """Print the DVC data version {md5, files, size} of a folder (the md5 of dvc.lock / .dvc)."""
    from lifecycle import lineage

    version = lineage.check_unchanged(path) if check else lineage.data_version(path)
    typer.echo(json.dumps(version))
