"""The ``tessera`` command line: one typer app that gathers every step's command.

Each step lives in its own module and owns its command; this file only assembles them. Modules
import their heavy dependencies (torch, mlflow, prefect) inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import typer

from components import (
    adapt,
    data,
    demo,
    evaluate,
    inpaint,
    pipeline,
    predict,
    pretrain,
    registry_cli,
    train_generator,
)
from flows import cli as flows_cli
from serving import cli as serving_cli

app = typer.Typer(
    name="tessera",
    help="Train, adapt and serve self-supervised vision models (MAE, SimCLR, BYOL, TTT-MAE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(data.app, name="data", help="Build, import, corrupt and version image data sets.")
app.command("pretrain")(pretrain.cli)
app.command("train-generator")(train_generator.cli)
app.command("inpaint")(inpaint.cli)
app.command("adapt")(adapt.cli)
app.command("evaluate")(evaluate.cli)
app.command("embed")(predict.embed_cli)
app.command("predict")(predict.predict_cli)
app.add_typer(flows_cli.app, name="flows", help="Prefect flows: retrain, promote, a local server.")
app.add_typer(registry_cli.app, name="registry", help="The MLflow model registry: list, show, promote.")
app.add_typer(pipeline.app, name="kfp", help="The Kubeflow Pipelines version of the retrain DAG.")
app.add_typer(serving_cli.app, name="serve", help="TorchServe: start, package, deploy, roll back.")
app.command("demo")(demo.cli)


if __name__ == "__main__":
    app()
