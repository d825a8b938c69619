"""The ``retrain`` flow: data -> pretrain -> generator -> adapt -> evaluate -> register -> promote -> deploy.

Thin by design (no tensor code here): every task wraps one component or adapter. Reads top to bottom
like the pipeline diagram in docs/orchestration.md. One parent MLflow run per flow run, a nested run
per step; the training steps are cached across flow runs (data version + params + code), so a rerun
after a crash skips what finished; a markdown run report and the promotion decision are Prefect
artifacts. Skips (with a logged reason) when the champion was trained on the same data version and
parameters, unless ``force``. It first tags its flow run with its process and marks what dead flow
runs of this host left (Prefect runs Running -> Crashed, MLflow runs RUNNING -> FAILED, with the
reason: ``flows.server.recover_crashed``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components import data as data_step
from components import train_generator
from flows import report, server, tasks
from flows.promote import promote_flow
from lifecycle import tracking
from tessera.config import deep_merge, load_params, section_of, to_dict

FAULT_ENV = "TESSERA_FAULT_EXIT_AFTER"  # fault injection for tests: hard-exit after this step
LINEAGE_SECTIONS = ("data", "pretrain", "generator", "adapt", "evaluate")


def _step(
    step: str, params: dict[str, Any], inputs: dict[str, str], upstream: list[str], ctx: dict[str, Any]
) -> dict[str, Any]:
    """Run (or take from the cache) one step; rerun it if its cached outputs were deleted."""
    key = tasks.step_key(step, params, ctx["data_version"]["md5"], upstream)
    out_dir = str(ctx["workspace"] / "runs" / step / key[:16])
    store = ctx["workspace"] / "prefect" / "results"
    call = {
        "step": step,
        "key": key,
        "params": params,
        "inputs": inputs,
        "out_dir": out_dir,
        "parent_run_id": ctx["run_id"],
        "mlflow_cfg": ctx["mlflow_cfg"],
        "data_version": ctx["data_version"],
        "data_path": inputs["data"],
    }
    runner = tasks.run_step.with_options(name=step, result_storage=store)
    state = runner(**call, return_state=True)
    result: dict[str, Any] = state.result()
    cached = state.name == "Cached"
    if cached and result["checkpoint"] and not Path(result["checkpoint"]).is_file():
        get_run_logger().warning("cached %s outputs are gone: running it again", step)
        state = runner.with_options(refresh_cache=True)(**call, return_state=True)
        result, cached = state.result(), False
    if os.environ.get(FAULT_ENV) == step:
        os._exit(137)  # simulate a crash (kill -9) right after this step finished
    return {**result, "cached": cached}


@flow(name="retrain", log_prints=True)
def retrain(
    params_path: str = "params.yaml",
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    root: str = ".",
    deploy: bool = True,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Retrain on the current data version and promote the result if it passes the gate."""
    log = get_run_logger()
    rootp = Path(root).resolve()
    params = deep_merge(load_params(rootp / params_path, preset), overrides or {})
    mlflow_cfg = section_of(tracking.Config, params, "mlflow")
    _recover(to_dict(mlflow_cfg))
    data_cfg = section_of(data_step.Config, params, "data")
    data_rel = str(Path(data_cfg.root) / data_cfg.name)
    corrupted_rel = f"{data_rel}-c"
    version = tasks.check_data(str(rootp), data_rel, corrupted_rel)
    params_hash = tasks.stable_hash({k: params.get(k) for k in LINEAGE_SECTIONS})
    champion = tasks.champion_lineage(to_dict(mlflow_cfg))
    summary: dict[str, Any] = {
        "data_version": version["md5"],
        "params_hash": params_hash,
        "tracking_uri": tracking.tracking_uri(mlflow_cfg),
        "experiment": mlflow_cfg.experiment,
        "champion_before": champion,
    }
    if (
        not force
        and champion.get("data_version") == version["md5"]
        and champion.get("params_hash") == params_hash
    ):
        summary["skipped"] = (
            f"champion v{champion['version']} was trained on data {version['md5']} "
            "with the same parameters: nothing to do (use --force to retrain)"
        )
        log.info(summary["skipped"])
        create_markdown_artifact(
            key=report.REPORT_KEY, markdown=f"# Retrain skipped\n\n{summary['skipped']}\n"
        )
        return summary
    tags = {
        "data_version": version["md5"],
        "params_hash": params_hash,
        "code_hash": tasks.code_hash(),
        "git_commit": tracking.git_commit(rootp),
    }
    run_id = tasks.open_parent_run(
        to_dict(mlflow_cfg), "retrain", params, version, str(rootp / data_rel), tags
    )
    summary.update({"mlflow_run_id": run_id, **tags})
    ctx: dict[str, Any] = {
        "workspace": tracking.workspace(),
        "run_id": run_id,
        "mlflow_cfg": to_dict(mlflow_cfg),
        "data_version": version,
    }
    data, corrupted = str(rootp / data_rel), str(rootp / corrupted_rel)
    results: dict[str, dict[str, Any]] = {}
    status = "FAILED"
    try:
        results["pretrain"] = _step("pretrain", params, {"data": data}, [], ctx)
        encoder = results["pretrain"]["checkpoint"]
        up = [results["pretrain"]["key"]]
        if section_of(train_generator.Config, params, "generator").enabled:
            results["generator"] = _step("generator", params, {"data": data, "encoder": encoder}, up, ctx)
        results["adapt"] = _step("adapt", params, {"data": data, "encoder": encoder}, up, ctx)
        classifier = results["adapt"]["checkpoint"]
        results["evaluate"] = _step(
            "evaluate",
            params,
            {"data": data, "corrupted": corrupted, "classifier": classifier},
            [results["adapt"]["key"]],
            ctx,
        )
        checkpoints = {"encoder": encoder, "classifier": results["evaluate"]["checkpoint"]}
        if "generator" in results:
            checkpoints["generator"] = results["generator"]["checkpoint"]
        summary["versions"] = tasks.register_challenger(
            ctx["mlflow_cfg"], run_id, checkpoints, results["evaluate"]["metrics"], tags
        )
        summary["decision"] = promote_flow(
            release=run_id,
            params_path=params_path,
            preset=preset,
            overrides=overrides,
            dry_run=dry_run,
            data_md5=version["md5"],
            root=str(rootp),
        )
        if summary["decision"]["promoted"] and not dry_run and deploy:
            summary["deployment"] = _deploy(summary["versions"])
        status = "FINISHED"
    finally:
        summary["steps"] = {
            s: {"cached": r["cached"], "out_dir": r["out_dir"], "seconds": r.get("seconds", 0.0)}
            for s, r in results.items()
        }
        markdown = report.render(summary, results)
        create_markdown_artifact(key=report.REPORT_KEY, markdown=markdown, description="retrain run report")
        tasks.close_parent_run(ctx["mlflow_cfg"], run_id, status, markdown)
    return summary


def _recover(mlflow_cfg: dict[str, Any]) -> None:
    """Own this flow run (tags with its pid and host), then mark the runs of dead flow runs crashed."""
    log = get_run_logger()
    try:
        server.claim_flow_run()
    except Exception as e:  # noqa: BLE001 - without the tags only crash detection is lost
        log.warning("could not tag the flow run with its process: %s", e)
    found = server.recover_crashed(mlflow_cfg)
    if found["mlflow_runs"] or found["flow_runs"]:
        log.warning(
            "marked the runs of dead flow runs: MLflow %s FAILED, Prefect %s Crashed",
            found["mlflow_runs"],
            found["flow_runs"],
        )
    for error in found.get("errors", []):
        log.warning("could not check for crashed runs: %s", error)


def _deploy(versions: dict[str, str]) -> dict[str, Any]:
    """Serve the new champion: the serving layer's deploy flow, once per bundle, if TorchServe runs."""
    from flows.deploy import deploy
    from serving import server

    log = get_run_logger()
    if not server.status(server.DEFAULT_HOME).get("running"):
        log.info("no TorchServe running (tessera serve up): the champion is registered, not served")
        return {}
    from lifecycle import registry

    return {
        registry.BUNDLES[kind]: deploy(model=registry.BUNDLES[kind], alias="champion") for kind in versions
    }


def demo(preset: str | None = None, force: bool = False, deploy: bool = True) -> dict[str, Any]:
    """Run ``retrain`` on the active params and return where to look (for ``tessera demo``)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from lifecycle import registry

    # the server given, the one `tessera flows up` started, or a temporary one that goes with this
    # process (Prefect's own, started otherwise, outlives a SIGTERM or kill -9)
    api_url = PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL") or server.running_api_url()
    with temporary_settings({PREFECT_API_URL: api_url or server.temporary_server()}):
        summary = retrain(preset=preset, force=force, deploy=deploy)
    client = tracking.client(section_of(tracking.Config, load_params("params.yaml", preset), "mlflow"))
    champions = {}
    for kind, name in registry.BUNDLES.items():
        mv = registry.version_by_alias(client, kind, registry.CHAMPION)
        if mv is not None:
            champions[name] = str(mv.version)
    uri = summary["tracking_uri"]
    return {
        "mlflow_ui": f"mlflow ui --backend-store-uri {uri} --port 5000",
        "mlflow_run_id": summary.get("mlflow_run_id"),
        "champion_versions": champions,
        "prefect_artifacts": [report.REPORT_KEY, "promotion-decision"],
        "prefect_ui": "tessera flows up, then http://127.0.0.1:4200/artifacts",
        "skipped": summary.get("skipped"),
        "decision": summary.get("decision"),
        "deployment": summary.get("deployment"),
        "evaluate_dir": (summary.get("steps") or {}).get("evaluate", {}).get("out_dir"),
    }
