"""The ``health`` flow: a seconds-long run that proves a worker picks up deployments and reaches MLflow."""

from __future__ import annotations

from prefect import flow

from lifecycle import tracking


@flow(name="health", log_prints=True)
def health() -> dict[str, str]:
    """Open the workspace and the MLflow store; return where they are."""
    cfg = tracking.Config()
    client = tracking.client(cfg)
    exp = tracking.experiment_id(client, cfg)
    out = {
        "workspace": str(tracking.workspace()),
        "tracking_uri": tracking.tracking_uri(cfg),
        "experiment_id": exp,
    }
    print(out)
    return out
