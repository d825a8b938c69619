"""MLflow-backed tracking: one parent run per flow run, one nested run per step.

Implements :class:`tessera.tracking.Tracker` with :class:`mlflow.MlflowClient` and an explicit
``run_id`` (MLflow's fluent API keeps the active run per thread, and Prefect runs tasks in threads).
The store is chosen by one setting: ``TESSERA_MLFLOW_URI`` (or ``MLFLOW_TRACKING_URI``, or
``mlflow.tracking_uri`` in ``params.yaml``); by default a SQLite file in the workspace folder
(``.tessera/mlflow.db``) with artifacts in ``.tessera/mlartifacts``. A PostgreSQL URI
(``postgresql://user@host:5432/db``) or a shared server (``http://mlflow:5000``) work the same way.

The data version is logged as the run's dataset input whose digest is the DVC md5 of the data
directory (MLflow Datasets, ``mlflow.data.from_numpy(..., digest=...)``), plus ``git_commit`` and
``data_version`` tags, so a model version leads back to the exact data and code it came from.

Every run records its owner (tags ``tessera.pid``, ``tessera.pid_start``, ``tessera.host``): a run
still RUNNING whose owner process is gone from this host was killed (kill -9, OOM, power loss), and
:func:`fail_crashed_runs` (called when a retrain starts, and by ``tessera flows up``) ends it as
FAILED with the reason in ``tessera.crash_reason``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

WORKSPACE_ENV = "TESSERA_WORKSPACE"
URI_ENVS = ("TESSERA_MLFLOW_URI", "MLFLOW_TRACKING_URI")
PID_TAG, PID_START_TAG, HOST_TAG = "tessera.pid", "tessera.pid_start", "tessera.host"
CRASH_TAG = "tessera.crash_reason"
# MLflow error codes worth another try (a busy or unreachable store); the others are deterministic.
TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "IO_ERROR", "DEADLINE_EXCEEDED", "ABORTED"}
    | {"REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "SERVICE_UNDER_MAINTENANCE"}
)


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``mlflow`` section of ``params.yaml``."""

    tracking_uri: str = ""  # "" = sqlite in the workspace; env TESSERA_MLFLOW_URI wins over this
    artifact_location: str = ""  # "" = <workspace>/mlartifacts (ignored for an http(s) server)
    experiment: str = "tessera"  # the MLflow experiment every flow run logs into
    system_metrics: bool = True  # CPU/memory/disk (and GPU) samples on every step's run
    system_metrics_interval_s: float = 5.0  # seconds between system-metric samples


def workspace() -> Path:
    """The workspace folder holding local state (``TESSERA_WORKSPACE``, default ``.tessera``)."""
    path = Path(os.environ.get(WORKSPACE_ENV, ".tessera")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def tracking_uri(cfg: Config | None = None) -> str:
    """The MLflow store URI: environment, then ``params.yaml``, then SQLite in the workspace.

    ``postgresql://`` is pinned to the psycopg2 driver (SQLAlchemy 2.1 would pick psycopg 3, which
    is not installed).
    """
    uri = next((os.environ[e] for e in URI_ENVS if os.environ.get(e)), "")
    uri = uri or (cfg.tracking_uri if cfg is not None else "")
    if not uri:
        return f"sqlite:///{workspace() / 'mlflow.db'}"
    if uri.startswith("postgresql://"):
        return "postgresql+psycopg2://" + uri.removeprefix("postgresql://")
    return uri


def artifact_location(cfg: Config | None = None) -> str | None:
    """Where new experiments keep their artifacts (None: the server decides)."""
    if cfg is not None and cfg.artifact_location:
        return cfg.artifact_location
    if tracking_uri(cfg).startswith(("http://", "https://", "databricks")):
        return None
    return (workspace() / "mlartifacts").as_uri()


def client(cfg: Config | None = None) -> Any:
    """An :class:`mlflow.MlflowClient` on the configured store (tracking and registry)."""
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client: Any, cfg: Config | None = None) -> str:
    """The id of the configured experiment, created on first use (safe under concurrent creation)."""
    from mlflow.exceptions import MlflowException

    name = (cfg or Config()).experiment
    exp = mlflow_client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(mlflow_client.create_experiment(name, artifact_location=artifact_location(cfg)))
    except MlflowException:  # another process created it first
        return str(mlflow_client.get_experiment_by_name(name).experiment_id)


def git_commit(root: str | Path = ".") -> str:
    """The checked-out commit (``unknown`` outside a git repository or before the first commit)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params -> ``{"a.b": "value"}`` strings (MLflow params are flat strings, <= 6000 chars)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class MlflowTracker:
    """A :class:`tessera.tracking.Tracker` writing into one MLflow run by id (thread-safe)."""

    def __init__(self, mlflow_client: Any, run_id: str) -> None:
        self.client = mlflow_client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(_metric_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i : i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_dataset(
        self, data_version: Mapping[str, Any], source: str | Path, name: str, context: str = "train"
    ) -> None:
        """Log the data set as this run's input: digest = the DVC md5, tags = files and size."""
        import numpy as np
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag

        stats = np.array([[int(data_version.get("files", 0)), int(data_version.get("size", 0))]])
        dataset = from_numpy(
            stats, source=str(Path(source).resolve()), name=name, digest=str(data_version["md5"])
        )
        tags = [InputTag(key="mlflow.data.context", value=context)]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])

    def log_outputs(self, out_dir: str | Path, artifact_path: str | None = None) -> None:
        """Log what a step wrote that a person looks at: metrics.json, pictures, tables (not weights)."""
        for path in sorted(Path(out_dir).glob("*")):
            if path.is_file() and path.suffix.lower() in (".json", ".png", ".csv", ".md", ".jpg", ".svg"):
                self.log_artifact(path, artifact_path)


def _metric_key(key: str) -> str:
    # MLflow keys allow [\w./ -:]; map anything else (e.g. '@', '=') to '_'.
    return "".join(c if c.isalnum() or c in "_-./ :" else "_" for c in key)


def start_run(
    mlflow_client: Any,
    exp_id: str,
    name: str,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given, owned by this process); return its id."""
    all_tags = {**owner_tags(), "mlflow.runName": name, **{k: str(v) for k, v in (tags or {}).items()}}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(exp_id, tags=all_tags, run_name=name)
    return str(run.info.run_id)


@contextlib.contextmanager
def step_run(
    mlflow_client: Any,
    exp_id: str,
    name: str,
    parent_run_id: str | None,
    cfg: Config | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[MlflowTracker]:
    """A nested run for one step: system metrics while it lasts, FINISHED or FAILED at the end."""
    run_id = start_run(mlflow_client, exp_id, name, parent_run_id, tags)
    monitor = _system_monitor(run_id, cfg or Config())
    status = "FAILED"
    try:
        yield MlflowTracker(mlflow_client, run_id)
        status = "FINISHED"
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                _finish_monitor(monitor)
        mlflow_client.set_terminated(run_id, status=status)


def _system_monitor(run_id: str, cfg: Config) -> Any:
    """MLflow's system-metrics sampler (needs psutil) on ``run_id``, or None when switched off."""
    if not cfg.system_metrics:
        return None
    try:
        import psutil  # noqa: F401
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        return None
    monitor = SystemMetricsMonitor(
        run_id, sampling_interval=cfg.system_metrics_interval_s, tracking_uri=tracking_uri(cfg)
    )
    monitor.start()
    return monitor


def _finish_monitor(monitor: Any) -> None:
    """Stop sampling; a step shorter than one interval still gets the sample taken at its start."""
    monitor.finish()
    if monitor._logging_step == 0:
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[19] if len(fields) > 19 else None


def owner_tags() -> dict[str, str]:
    """Who runs this: ``tessera.pid``, ``tessera.pid_start`` (against pid reuse), ``tessera.host``."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    start = _process_start(pid)
    if start is not None:
        tags[PID_START_TAG] = start
    return tags


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` of this host lives (a zombie, or another process that reuses the pid
    because its start differs from ``start``, does not)."""
    if pid <= 0:
        return False
    proc = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():  # Linux: /proc says it all
        try:
            stat = proc.read_text()
        except OSError:
            return False
        fields = stat[stat.rfind(")") + 2 :].split()
        if not fields or fields[0] in ("Z", "X"):
            return False
        return not start or len(fields) <= 19 or fields[19] == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the owner named by ``tags`` (see :func:`owner_tags`) lives: None when the tags name
    no owner or another host (nothing can be told from here)."""
    pid, host = tags.get(PID_TAG, ""), tags.get(HOST_TAG, "")
    if not pid.isdigit() or host != socket.gethostname():
        return None
    return process_alive(int(pid), tags.get(PID_START_TAG) or None)


def crash_reason(tags: Mapping[str, str], by: str) -> str:
    """The message that says why a run was ended: whose process died, who noticed, when."""
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return (
        f"crashed: its process {tags.get(PID_TAG)} on {tags.get(HOST_TAG)} is gone (killed or died "
        f"before the run ended); marked by {by} (pid {os.getpid()}) at {when}"
    )


def fail_crashed_runs(mlflow_client: Any, exp_id: str, by: str = "the next flow run") -> list[str]:
    """End the runs of ``exp_id`` still RUNNING whose owner process is dead on this host: status
    FAILED, tag ``tessera.crash_reason``. Runs of other hosts or without an owner are left alone.
    Returns the ids of the runs it ended."""
    query = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    dead, token = [], None
    while True:  # every page first: ending runs while paging would shift the pages
        page = mlflow_client.search_runs([exp_id], query, max_results=500, page_token=token)
        dead += [run for run in page if owner_alive(run.data.tags) is False]
        token = getattr(page, "token", None)
        if not token:
            break
    for run in dead:
        mlflow_client.set_tag(run.info.run_id, CRASH_TAG, crash_reason(run.data.tags, by))
        mlflow_client.set_terminated(run.info.run_id, status="FAILED")
    return [str(run.info.run_id) for run in dead]


def is_transient(exc: BaseException) -> bool:
    """An MLflow or database error that another try may not meet (a busy, locked or unreachable
    store); invalid requests, missing or existing resources are deterministic."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return str(exc.error_code) in TRANSIENT_CODES
    return type(exc).__name__ in ("OperationalError", "TimeoutError", "DisconnectionError")
