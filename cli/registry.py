"""``tessera registry list|show|promote|rollback``: the MLflow model registry for people.

``promote`` runs the same gate as the promote flow (lifecycle/promotion.py); skipping the gate
takes ``--force --reason TEXT``, and the reason is recorded on the model versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tessera.names import BUNDLES

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read (mlflow, promote)")
PresetOpt = typer.Option(None, "--preset", help="preset overlay: cpu or gpu")


def _configs(params_path: Path, preset: str | None):  # type: ignore[no-untyped-def]
    from lifecycle import promotion, tracking
    from tessera.config import load_params, section_of

    params = load_params(params_path, preset) if params_path.exists() else {}
    return (
        params,
        section_of(tracking.Config, params, "mlflow"),
        section_of(promotion.Config, params, "promote"),
    )


@app.command("list")
def list_cmd(params: Path = ParamsOpt, preset: str | None = PresetOpt) -> None:
    """List every version of tessera-encoder / -ttt-classifier / -generator with aliases and decisions."""
    from lifecycle import registry, tracking

    _, mlflow_cfg, _ = _configs(params, preset)
    rows = registry.describe(tracking.client(mlflow_cfg))
    if not rows:
        typer.echo("no registered versions yet: run `tessera flows retrain`")
        return
    typer.echo(f"{'model':<24}{'version':>8}  {'aliases':<22}{'decision':<10}{'data':<14}release")
    for r in rows:
        typer.echo(
            f"{r['model']:<24}{r['version']:>8}  {','.join(r['aliases']):<22}{r['decision']:<10}"
            f"{r['data_version'][:12]:<14}{r['release']}"
        )


@app.command("show")
def show(
    model: str = typer.Argument(BUNDLES["classifier"], help="registered model name"),
    ref: str = typer.Argument("champion", help="alias or version number"),
    params: Path = ParamsOpt,
    preset: str | None = PresetOpt,
) -> None:
    """Show one version: tags (data version, params hash, promotion decision), source, aliases."""
    from lifecycle import registry, tracking

    _, mlflow_cfg, _ = _configs(params, preset)
    client = tracking.client(mlflow_cfg)
    mv = (
        client.get_model_version(model, ref)
        if ref.isdigit()
        else client.get_model_version_by_alias(model, ref)
    )
    typer.echo(f"{mv.name} v{mv.version} aliases={list(mv.aliases)} run={mv.run_id}\nsource: {mv.source}")
    typer.echo(registry.tags_json(mv))


@app.command("promote")
def promote_cmd(
    release: str = typer.Argument(None, help="release (parent run id); default: the challenger"),
    dry_run: bool = typer.Option(False, "--dry-run", help="decide and print, change nothing"),
    force: bool = typer.Option(False, "--force", help="skip the gate (needs --reason)"),
    reason: str = typer.Option("", "--reason", help="why the gate is skipped (recorded)"),
    params: Path = ParamsOpt,
    preset: str | None = PresetOpt,
) -> None:
    """Promote a release through the gate (all its bundles move together)."""
    import dataclasses

    from lifecycle import promotion

    _, mlflow_cfg, promote_cfg = _configs(params, preset)
    try:
        decision = promotion.promote(
            release, promote_cfg, mlflow_cfg, dry_run=dry_run, force=force, reason=reason
        )
    except promotion.PromotionError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps(dataclasses.asdict(decision), indent=2))
    raise typer.Exit(0 if decision.promoted or dry_run else 1)


@app.command("register")
def register_cmd(
    encoder: Path = typer.Option(..., "--encoder", help="encoder.pt"),
    classifier: Path = typer.Option(..., "--classifier", help="classifier.pt"),
    evaluation: Path = typer.Option(..., "--evaluation", help="evaluate's metrics.json"),
    data: Path = typer.Option(..., "--data", help="the data folder it was trained on"),
    generator: Path = typer.Option(None, "--generator", help="generator.pt (optional)"),
    promote: bool = typer.Option(False, "--promote", help="run the gate afterwards"),
    params: Path = ParamsOpt,
    preset: str | None = PresetOpt,
) -> None:
    """Register checkpoints made outside the flow (e.g. by Kubeflow) as a challenger release."""
    from lifecycle import promotion, registry

    all_params, mlflow_cfg, promote_cfg = _configs(params, preset)
    checkpoints = {"encoder": encoder, "classifier": classifier}
    if generator is not None and generator.is_file():
        checkpoints["generator"] = generator
    from lifecycle.verify import EvaluationRejected

    try:
        metrics = json.loads(evaluation.read_text())
        if not isinstance(metrics, dict):
            raise EvaluationRejected(f"{evaluation} is not evaluate's metrics.json (a JSON object)")
        release, versions = registry.release_from_files(mlflow_cfg, all_params, data, checkpoints, metrics)
    except (EvaluationRejected, json.JSONDecodeError, OSError) as e:
        typer.echo(f"error: not registered: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"release {release}: {versions} (alias challenger)")
    if promote:
        decision = promotion.promote(release, promote_cfg, mlflow_cfg)
        typer.echo(f"promotion: {'promoted' if decision.promoted else 'not promoted'} ({decision.reason})")


@app.command("rollback")
def rollback_cmd(
    to: str = typer.Option(None, "--to", help="release to restore; default: the previous one"),
    reason: str = typer.Option("rollback", "--reason", help="recorded on the versions"),
    params: Path = ParamsOpt,
    preset: str | None = PresetOpt,
) -> None:
    """Move the champion alias of the whole release back to the previous champion."""
    from lifecycle import promotion

    _, mlflow_cfg, promote_cfg = _configs(params, preset)
    try:
        versions = promotion.rollback(mlflow_cfg, to, reason, promote_cfg.lock_timeout_s)
    except promotion.PromotionError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from e
    typer.echo(f"champion is now {versions}")


if __name__ == "__main__":
    app()
