"""The ``tessera`` command line: one typer app that gathers every command.

The top layer: nothing imports it. Each step (``components/``) owns its command; the commands that
need the lifecycle adapters, the flows or serving live beside this file (``cli/``). Modules import
their heavy dependencies (torch, mlflow, prefect) inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import typer

from cli import data, demo, flows, kfp, registry, serve, steps
from components import adapt, evaluate, inpaint, predict, pretrain, train_generator

app = typer.Typer(
    name="tessera",
    help="Train, adapt and serve self-supervised vision models (MAE, SimCLR, BYOL, TTT-MAE).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(data.app, name="data", help="Build, import, corrupt and version image data sets.")
app.command("pretrain")(steps.with_data_version(pretrain.cli))
app.command("train-generator")(steps.with_data_version(train_generator.cli))
app.command("inpaint")(inpaint.cli)
app.command("adapt")(steps.with_data_version(adapt.cli))
app.command("evaluate")(evaluate.cli)
app.command("embed")(steps.with_local_model(predict.embed_cli))
app.command("predict")(steps.with_local_model(predict.predict_cli))
app.add_typer(flows.app, name="flows", help="Prefect flows: retrain, promote, a local server.")
app.add_typer(registry.app, name="registry", help="The MLflow model registry: list, show, promote.")
app.add_typer(kfp.app, name="kfp", help="The Kubeflow Pipelines version of the retrain DAG.")
app.add_typer(serve.app, name="serve", help="TorchServe: start, package, deploy, roll back.")
app.command("demo")(demo.cli)


if __name__ == "__main__":
    app()
