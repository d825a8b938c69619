"""``tessera flows up|down|retrain|promote``: the Prefect side of Tessera from the command line.

``up`` starts a real Prefect server (SQLite in the workspace by default; ``TESSERA_PREFECT_DB_URL``
for PostgreSQL), a process work pool with a worker, and registers the deployments in ``prefect.yaml``
(``retrain`` on a cron schedule) and marks what dead flow runs left (Prefect runs Running ->
Crashed, MLflow runs RUNNING -> FAILED). ``retrain``/``promote`` run the flows now; they report to
the server ``up`` started when it is running, otherwise to a temporary local one that stops with
the command (exit, SIGTERM, SIGINT, even kill -9) and that ``down`` also stops.
"""

from __future__ import annotations

import json
import os

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _prepare() -> None:
    """Prefect settings in the workspace; attach to the running local server if there is one,
    otherwise start a temporary one that goes with this command (before ``prefect`` is imported)."""
    from flows import server, settings

    settings.configure()
    if "PREFECT_API_URL" not in os.environ:
        os.environ["PREFECT_API_URL"] = server.running_api_url() or server.temporary_server()


@app.command("up")
def up(
    port: int = typer.Option(4200, help="port of the Prefect server (UI at http://127.0.0.1:PORT)"),
    deploy: bool = typer.Option(True, help="register the deployments of prefect.yaml"),
    worker: bool = typer.Option(True, help="start a process worker for the tessera-process pool"),
) -> None:
    """Start a local Prefect server, deploy prefect.yaml (cron schedule) and start a worker.

    With PREFECT_API_URL set (a remote or containerised server), no server is started: the pool and
    the deployments are created there.
    """
    from flows import server, settings

    settings.configure()
    remote = os.environ.get("PREFECT_API_URL")
    api_url = server.wait_healthy(remote) if remote else server.start_server(port)
    typer.echo(f"Prefect server: {api_url} (UI http://127.0.0.1:{port})")
    if deploy:
        names = server.deploy_all(api_url)
        typer.echo(f"deployments registered from prefect.yaml: {', '.join(names)}")
    if worker:
        pid = server.start_worker(api_url)
        typer.echo(f"worker for pool {server.POOL}: pid {pid}")
    _recover_crashed(api_url)
    typer.echo(f"export PREFECT_API_URL={api_url}   # to use it from another shell")


def _recover_crashed(api_url: str) -> None:
    """Mark the runs of dead flow runs of this host: Prefect Crashed, MLflow FAILED (with a reason)."""
    from flows import server
    from lifecycle import tracking
    from tessera.config import load_params, section_of, to_dict

    os.environ["PREFECT_API_URL"] = api_url
    try:
        cfg = to_dict(section_of(tracking.Config, load_params("params.yaml"), "mlflow"))
    except Exception:  # noqa: BLE001 - no params.yaml here: the default experiment
        cfg = {}
    found = server.recover_crashed(cfg, by="tessera flows up")
    if found["flow_runs"] or found["mlflow_runs"]:
        typer.echo(
            f"runs of dead flow runs marked: Prefect {len(found['flow_runs'])} Crashed, "
            f"MLflow {len(found['mlflow_runs'])} FAILED"
        )
    for error in found.get("errors", []):
        typer.echo(f"could not check for crashed runs: {error}", err=True)


@app.command("down")
def down() -> None:
    """Stop the worker and the server that `tessera flows up` started, and temporary flow servers."""
    from flows import server, settings

    settings.configure()
    stopped = server.stop()
    typer.echo(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command("retrain")
def retrain_cmd(
    force: bool = typer.Option(False, "--force", help="retrain even if the champion is current"),
    preset: str = typer.Option(None, "--preset", help="params preset: cpu or gpu"),
    params: str = typer.Option("params.yaml", "--params", help="params.yaml to read"),
    deploy: bool = typer.Option(True, help="deploy a promoted champion to TorchServe"),
    dry_run: bool = typer.Option(False, "--dry-run", help="decide promotion, change nothing"),
) -> None:
    """Run the retrain flow now: data check, train, evaluate, register, promote, deploy."""
    _prepare()
    from flows.retrain import retrain

    summary = retrain(params_path=params, preset=preset, force=force, deploy=deploy, dry_run=dry_run)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command("promote")
def promote_cmd(
    release: str = typer.Argument(None, help="release (parent run id); default: the challenger"),
    dry_run: bool = typer.Option(False, "--dry-run", help="decide and report, change nothing"),
    force: bool = typer.Option(False, "--force", help="skip the gate (needs --reason)"),
    reason: str = typer.Option("", "--reason", help="why the gate is skipped"),
    preset: str = typer.Option(None, "--preset", help="params preset: cpu or gpu"),
    params: str = typer.Option("params.yaml", "--params", help="params.yaml to read"),
) -> None:
    """Run the promote flow: the gate (re-evaluating the champion if the data changed), aliases, artifact."""
    _prepare()
    from components.command import data_folder
    from flows.promote import promote_flow
    from lifecycle import lineage
    from tessera.config import load_params

    md5 = lineage.version_for(data_folder(load_params(params, preset)))["md5"]
    decision = promote_flow(
        release=release,
        params_path=params,
        preset=preset,
        dry_run=dry_run,
        force=force,
        reason=reason,
        data_md5=md5,
    )
    typer.echo(json.dumps(decision, indent=2, default=str))
