"""Prefect tasks of the retrain flow: each wraps one component or one adapter call.

Retries only where I/O can fail (DVC, MLflow), and only on I/O errors (:func:`retry_on_io`): a
``DataError`` or ``ConfigError`` fails at once. Training steps are cached across flow runs by a key
made of the data version, the step's parameters, the code and the upstream keys, with results
persisted in the workspace, so a rerun after a crash skips what finished.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from lifecycle import registry, tracking
from tessera.config import section_of
from tessera.errors import TesseraError

# step -> (module in components/, params section, checkpoint it writes, positional inputs)
STEPS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "pretrain": ("pretrain", "pretrain", "encoder.pt", ("data",)),
    "generator": ("train_generator", "generator", "generator.pt", ("data", "encoder")),
    "adapt": ("adapt", "adapt", "classifier.pt", ("data", "encoder")),
    # evaluate writes the classifier again, with its adaptation policy: that one is registered
    "evaluate": ("evaluate", "evaluate", "classifier.pt", ("data", "corrupted", "classifier")),
}
STAMPS_DATA_VERSION = {"pretrain", "generator", "adapt"}  # steps whose checkpoint carries it
ROOT = Path(__file__).resolve().parents[1]


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-able object with sorted keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_hash(step: str | None = None) -> str:
    """sha256 of the library's sources plus the step's component (what a cached result depends on)."""
    files = sorted((ROOT / "src" / "tessera").rglob("*.py"))
    if step is not None:
        files.append(ROOT / "components" / f"{STEPS[step][0]}.py")
    h = hashlib.sha256()
    for path in files:
        if path.is_file():
            h.update(path.relative_to(ROOT).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def step_key(step: str, params: Mapping[str, Any], data_md5: str, upstream: list[str]) -> str:
    """The cache key of one step: data version + its params section + code + upstream keys."""
    section = params.get(STEPS[step][1], {})
    return stable_hash([step, data_md5, section, code_hash(step), upstream])[:32]


def _by_key(_ctx: Any, arguments: dict[str, Any]) -> str:
    return f"tessera-{arguments['step']}-{arguments['key']}"


def is_io_error(exc: BaseException | None) -> bool:
    """An error another try may not meet: OS and network errors, timeouts, a failed subprocess, a
    busy or unreachable MLflow store (also as the cause of another error). Tessera's own errors
    (``DataError``, ``ConfigError``, ...) say something is wrong: never."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, TesseraError):
            return False
        if isinstance(exc, OSError | TimeoutError | subprocess.SubprocessError) or tracking.is_transient(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def retry_on_io(_task: Any, _task_run: Any, state: Any) -> bool:
    """Prefect's ``retry_condition_fn``: go on to the next try only after an I/O error."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_io_error(exc)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io)
def check_data(root: str, data_dir: str, corrupted_dir: str) -> dict[str, Any]:
    """DVC: pull what the workspace lacks, stop on tampering, return the data version."""
    from lifecycle import lineage

    log = get_run_logger()
    data, corrupted = Path(root) / data_dir, Path(root) / corrupted_dir
    missing = [p for p in (data, corrupted) if not p.is_dir()]
    if missing:
        log.info("workspace lacks %s: dvc pull", [str(p) for p in missing])
        lineage.pull([str(p) for p in missing], cwd=root)
    # The one place a flow run computes the data version (one hash per folder): every step is given it.
    version = lineage.check_unchanged(data)  # DataError naming the changed files
    version["corrupted_md5"] = lineage.check_unchanged(corrupted)["md5"]
    log.info("data version %s (%s files)", version["md5"], version.get("files"))
    return dict(version)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io)
def open_parent_run(
    mlflow_cfg: dict[str, Any],
    name: str,
    params: dict[str, Any],
    data_version: dict[str, Any],
    data_path: str,
    tags: dict[str, str],
) -> str:
    """The flow run's parent MLflow run: params, tags, the dataset input (digest = DVC md5)."""
    cfg = tracking.Config(**mlflow_cfg)
    client = tracking.client(cfg)
    run_id = tracking.start_run(client, tracking.experiment_id(client, cfg), name, tags=tags)
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params(params)
    tracker.log_dataset(data_version, data_path, name=Path(data_path).name)
    return run_id


@task(persist_result=True, cache_key_fn=_by_key, cache_expiration=None)
def run_step(
    step: str,
    key: str,
    params: dict[str, Any],
    inputs: dict[str, str],
    out_dir: str,
    parent_run_id: str,
    mlflow_cfg: dict[str, Any],
    data_version: dict[str, Any],
    data_path: str,
) -> dict[str, Any]:
    """Run one component in-process inside a nested MLflow run; returns its metrics and outputs."""
    from components.command import step_threads

    step_threads()  # torch threads that fit the machine (tessera.threads), unless OMP_NUM_THREADS is set
    module_name, section, ckpt_name, wanted = STEPS[step]
    module = importlib.import_module(f"components.{module_name}")
    cfg = section_of(module.Config, params, section)
    cfg_mlflow = tracking.Config(**mlflow_cfg)
    client = tracking.client(cfg_mlflow)
    exp = tracking.experiment_id(client, cfg_mlflow)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tracking.step_run(
        client,
        exp,
        step,
        parent_run_id,
        cfg_mlflow,
        tags={"data_version": data_version["md5"], "cache_key": key},
    ) as tracker:
        tracker.log_params({section: params.get(section, {})})
        tracker.log_dataset(data_version, data_path, name=Path(data_path).name)
        t0 = time.perf_counter()
        stamp = {"data_version": data_version} if step in STAMPS_DATA_VERSION else {}
        metrics = module.run(cfg, *[inputs[name] for name in wanted], out, tracker=tracker, **stamp)
        seconds = time.perf_counter() - t0  # run() with MLflow uploads: for the report
        tracker.log_metrics({k: float(v) for k, v in metrics.items() if _is_number(v)}, step=0)
        tracker.log_outputs(out)
        step_run_id = tracker.run_id
    ckpt = str(out / ckpt_name) if ckpt_name else ""
    return {
        "step": step,
        "metrics": {k: float(v) for k, v in metrics.items() if _is_number(v)},
        "out_dir": str(out),
        "checkpoint": ckpt,
        "mlflow_run_id": step_run_id,
        "key": key,
        "seconds": seconds,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io)
def register_challenger(
    mlflow_cfg: dict[str, Any],
    release: str,
    checkpoints: dict[str, str],
    evaluation: dict[str, float],
    tags: dict[str, str],
) -> dict[str, str]:
    """Log the evaluation on the parent run and register the release's bundles as ``challenger``."""
    client = tracking.client(tracking.Config(**mlflow_cfg))
    tracking.MlflowTracker(client, release).log_metrics(evaluation, step=0)
    return registry.register_release(client, release, checkpoints, tags)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io)
def champion_lineage(mlflow_cfg: dict[str, Any]) -> dict[str, str]:
    """The champion's data version and params hash (empty when there is no champion)."""
    client = tracking.client(tracking.Config(**mlflow_cfg))
    mv = registry.version_by_alias(client, registry.ANCHOR, registry.CHAMPION)
    return (
        {}
        if mv is None
        else {
            "data_version": mv.tags.get("data_version", ""),
            "params_hash": mv.tags.get("params_hash", ""),
            "version": str(mv.version),
            "release": mv.tags.get("release", ""),
        }
    )


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_on_io)
def close_parent_run(mlflow_cfg: dict[str, Any], run_id: str, status: str, report: str) -> None:
    client = tracking.client(tracking.Config(**mlflow_cfg))
    client.log_text(run_id, report, "report.md")
    client.set_terminated(run_id, status=status)
