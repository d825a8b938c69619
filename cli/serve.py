"""``tessera serve``: start/stop a local TorchServe, package archives, deploy and roll back versions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tessera.names import BUNDLES

app = typer.Typer(no_args_is_help=True, help="TorchServe: start, package, deploy, roll back.")
HOME = typer.Option(Path(".tessera/serving"), "--home", help="The TorchServe home (config, store, logs).")


def _cfg(params: Path, preset: str | None):  # -> package.Config
    from serving import package
    from tessera.config import load_params

    return package.config_from_params(load_params(params, preset)) if params.exists() else package.Config()


@app.command("up")
def up(
    home: Path = HOME,
    config: str = typer.Option(
        "local", help="local (no auth), production (token auth) or a .properties file"
    ),
    port: int = typer.Option(8080, help="Inference port; management = port+1, metrics = port+2."),
    host: str = typer.Option("127.0.0.1", help="Inference bind address (0.0.0.0 to serve the network)."),
) -> None:
    """Start TorchServe in HOME and wait until it answers /ping."""
    from serving import server

    ports = server.Ports(port, port + 1, port + 2, port - 1010, port - 1009)
    srv = server.start(home, config, ports, host=host)
    typer.echo(
        f"TorchServe up: inference {srv.inference_url}, management {srv.management_url}, "
        f"metrics {srv.metrics_url}/metrics (config {config})"
    )


@app.command("down")
def down(home: Path = HOME) -> None:
    """Stop the TorchServe started from HOME."""
    from serving import server

    typer.echo("stopped" if server.stop(home) else "no TorchServe was running")


@app.command("status")
def status(home: Path = HOME) -> None:
    """Health, addresses, models and versions (which one is default) as JSON."""
    from serving import server

    typer.echo(json.dumps(server.status(home), indent=2))


@app.command("package")
def package_cmd(
    model: str = typer.Option(BUNDLES["encoder"], help="Registered model name."),
    alias: str = typer.Option("champion", help="Alias or version number in the registry."),
    checkpoint: Path | None = typer.Option(None, help="Package this checkpoint instead."),
    version: str = typer.Option("1", help="TorchServe version when packaging a checkpoint."),
    store: Path = typer.Option(Path(".tessera/serving/model-store"), help="Where the .mar goes."),
    inpaint_model: str | None = typer.Option(None, help="Generator: MAE checkpoint or models:/ URI."),
    params: Path = typer.Option(Path("params.yaml"), help="params.yaml (section serve)."),
    preset: str | None = typer.Option(None, help="cpu or gpu preset."),
) -> None:
    """Build a .mar with torch-model-archiver from `models:/MODEL@ALIAS` or a checkpoint."""
    from serving import package

    cfg = _cfg(params, preset)
    if checkpoint is not None:
        mar = package.package(checkpoint, model, version, store, cfg, inpaint_model=inpaint_model)
    else:
        uri = f"models:/{model}/{alias}" if alias.isdigit() else f"models:/{model}@{alias}"
        mar, model, version = package.package_uri(uri, store, cfg, inpaint_model=inpaint_model)
    typer.echo(f"{mar} ({model} v{version})")


@app.command("deploy")
def deploy_cmd(
    model: str = typer.Option(BUNDLES["encoder"], help="Registered model name."),
    alias: str = typer.Option("champion", help="Alias or version number in the registry."),
    checkpoint: Path | None = typer.Option(None, help="Deploy this checkpoint instead."),
    version: str | None = typer.Option(None, help="Its version (with --checkpoint)."),
    home: Path = HOME,
    keep: int = typer.Option(2, help="Versions kept registered."),
    params: Path = typer.Option(Path("params.yaml")),
    preset: str | None = typer.Option(None),
) -> None:
    """Register, smoke-test and make default a version in the running TorchServe (Prefect flow)."""
    from flows.deploy import deploy

    out = deploy(
        model=model,
        alias=alias,
        checkpoint=str(checkpoint) if checkpoint else None,
        version=version,
        home=str(home),
        keep=keep,
        cfg=_cfg(params, preset),
    )
    typer.echo(json.dumps(out, indent=2, default=str))


@app.command("rollback")
def rollback_cmd(
    model: list[str] = typer.Option(None, "--model", help="Models to roll back (default: all)."),
    home: Path = HOME,
    registry: bool = typer.Option(True, help="Also move the MLflow champion alias back."),
    reason: str = typer.Option("serving rollback", help="Recorded on the registry versions."),
) -> None:
    """Previous version default again in TorchServe and `champion` moved back, together."""
    from flows.deploy import rollback

    out = rollback(models=model or None, home=str(home), registry=registry, reason=reason)
    typer.echo(json.dumps(out, indent=2, default=str))
