"""``tessera kfp``: compile the Kubeflow pipeline (``flows/kfp_pipeline.py``) or run its local twin."""

from __future__ import annotations

from pathlib import Path

import typer

from flows.kfp_pipeline import DEFAULT_IMAGE, IMAGE_ENV, YAML_PATH, compile_yaml

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.command("compile")
def compile_cmd(
    out: Path = typer.Option(YAML_PATH, "--out", help="where to write the pipeline YAML"),
    image: str = typer.Option(None, "--image", help=f"train image (default ${IMAGE_ENV} or {DEFAULT_IMAGE})"),
) -> None:
    """Compile the KFP v2 retrain pipeline to YAML (submit it with the KFP UI or client)."""
    typer.echo(f"wrote {compile_yaml(out, image)}")


@app.command("run-local")
def run_local_cmd(
    data: Path = typer.Option(..., "--data", help="image folder data/<name>"),
    corrupted: Path = typer.Option(..., "--corrupted", help="corrupted set data/<name>-c"),
    params: Path = typer.Option(Path("params.yaml"), "--params"),
    preset: str = typer.Option(None, "--preset"),
    root: Path = typer.Option(Path(".tessera/kfp-local"), "--root", help="pipeline root"),
) -> None:
    """Run the lightweight twin of the pipeline in this environment with kfp.local (no Docker)."""
    from flows.kfp_local import run_local
    from lifecycle import lineage
    from tessera.config import load_params

    version = lineage.version_for(data)
    outputs = run_local(load_params(params, preset), data, version, corrupted, root)
    typer.echo(outputs)
