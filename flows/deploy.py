"""Deploy a registered model version to a running TorchServe, and roll it back.

``deploy``: package ``models:/NAME@alias`` (or a checkpoint) as a .mar whose TorchServe version is the
MLflow version number -> register it beside the running version -> warm up and one smoke request on
the new version -> make it the default -> keep the previous version registered (older ones are
unregistered). A failed smoke test unregisters the new version and leaves the default untouched.

``rollback``: the previous version becomes TorchServe's default again AND the MLflow ``champion``
alias moves back to its release, as one act: if moving the alias fails, the default is restored.

Called by the ``retrain`` flow after a promotion, and by ``tessera serve deploy|rollback``.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.exceptions import MissingContextError

from flows.tasks import retry_on_io
from serving import management, package, server
from tessera.names import BUNDLES


@task(retries=2, retry_delay_seconds=3, retry_condition_fn=retry_on_io)  # a bad checkpoint fails at once
def build_archive(
    model: str, alias: str, checkpoint: str | None, version: str | None, store: str, cfg: package.Config
) -> dict[str, str]:
    """The .mar of the model version (from the registry, or from a checkpoint with an explicit version)."""
    if checkpoint:
        if not version:
            raise server.ServingError("deploying a checkpoint needs --version (the MLflow version number)")
        mar = package.package(checkpoint, model, version, store, cfg)
        return {"mar": str(mar), "name": model, "version": str(version)}
    uri = f"models:/{model}/{alias}" if alias.isdigit() else f"models:/{model}@{alias}"
    mar, name, ver = package.package_uri(uri, store, cfg)
    return {"mar": str(mar), "name": name, "version": ver}


@task
def register_version(home: str, mar: str, name: str, version: str, workers: int) -> bool:
    """Register the archive unless that version is already there; True if newly registered."""
    srv = server.Server.load(home)
    if version in management.versions(srv, name):
        return False
    management.register(srv, mar, workers=workers)
    return True


@task
def smoke_test(home: str, name: str, version: str, kind: str) -> dict[str, Any]:
    """Warm-up requests and one smoke request against that version only."""
    return management.smoke(server.Server.load(home), name, version, kind)


@task
def make_default(home: str, name: str, version: str, keep: int, previous: str | None) -> dict[str, Any]:
    """Set the default version, record it, unregister versions older than the kept ones."""
    srv = server.Server.load(home)
    management.set_default(srv, name, version)
    if not management.history(srv).get(name) and previous and previous != version:
        management.record(srv, name, previous)  # first deploy over a version loaded at start
    management.record(srv, name, version)
    dropped = management.prune(srv, name, keep)
    return {"previous": previous, "default": version, "unregistered": dropped}


@flow(name="deploy")
def deploy(
    model: str = BUNDLES["encoder"],
    alias: str = "champion",
    checkpoint: str | None = None,
    version: str | None = None,
    home: str = str(server.DEFAULT_HOME),
    keep: int = 2,
    cfg: package.Config | None = None,
) -> dict[str, Any]:
    """Package, register, smoke-test and make default one model version in a running TorchServe."""
    log = _logger()
    cfg = cfg or package.Config()
    srv = server.Server.load(home)
    built = _step(build_archive, model, alias, checkpoint, version, str(srv.model_store), cfg)
    name, ver = built["name"], built["version"]
    kind = package.kind_of_name(name) if not checkpoint else _kind_of_checkpoint(checkpoint)
    previous = management.default_version(srv, name)  # before registering: a first version becomes default
    new = _step(register_version, home, built["mar"], name, ver, cfg.min_workers)
    try:
        smoke = _step(smoke_test, home, name, ver, kind)
    except Exception:
        if new:
            management.unregister(srv, name, ver)
        raise
    done = _step(make_default, home, name, ver, keep, previous)
    log.info(
        "deployed %s v%s (previous default %s), smoke %.0f ms",
        name,
        ver,
        done["previous"],
        smoke["latency_ms"],
    )
    return {"model": name, "version": ver, **done, "smoke": smoke}


def _step(step: Any, *args: Any) -> Any:
    """Run a task inside a flow run; its plain function when the flow is called as ``deploy.fn``."""
    from prefect.context import FlowRunContext

    return step(*args) if FlowRunContext.get() is not None else step.fn(*args)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # called as plain functions (deploy.fn) outside a flow run
        return logging.getLogger("tessera.deploy")


def _kind_of_checkpoint(path: str) -> str:
    from tessera import checkpoint

    return package.kind_of(checkpoint.load(path)["arch"])


@flow(name="rollback")
def rollback(
    models: list[str] | None = None,
    home: str = str(server.DEFAULT_HOME),
    registry: bool = True,
    reason: str = "serving rollback",
) -> dict[str, Any]:
    """Previous version default again in TorchServe and ``champion`` moved back in MLflow, together."""
    log = _logger()
    srv = server.Server.load(home)
    names = models or sorted(management.history(srv))
    moves = {name: management.previous_version(srv, name) for name in names}  # name -> (current, previous)
    done: list[str] = []
    try:
        for name, (_, previous) in moves.items():
            management.set_default(srv, name, previous)
            done.append(name)
        moved: dict[str, Any] = {}
        if registry:
            from lifecycle import release

            anchor = names[0]
            moved = release.move_champion(anchor, moves[anchor][1], reason)
    except Exception:
        for name in done:  # one act: undo the TorchServe half if the registry half failed
            management.set_default(srv, name, moves[name][0])
        raise
    for name, (current, _) in moves.items():
        management.pop(srv, name, current)
    log.info("rolled back %s", {n: f"v{c} -> v{p}" for n, (c, p) in moves.items()})
    return {"models": {n: {"from": c, "to": p} for n, (c, p) in moves.items()}, "registry": moved}


if __name__ == "__main__":  # python -m flows.deploy models:/tessera-encoder@champion
    import sys

    uri = sys.argv[1] if len(sys.argv) > 1 else "models:/tessera-encoder@champion"
    from lifecycle.release import parse

    name, ref = parse(uri)
    print(deploy(model=name, alias=ref))
