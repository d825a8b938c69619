"""``tessera demo`` (``make demo``): the whole job end to end on the embedded default.

1. data: ``dvc repro data corrupt`` builds the embedded digits set and its corrupted test set (the
   same stages as ``dvc.yaml``), ``dvc push`` versions them in the default remote; prints counts,
   the DVC hash and where the pictures are.
2. retrain: the Prefect ``retrain`` flow (pretrain -> generator -> adapt -> evaluate -> register ->
   promote), MLflow on SQLite in ``.tessera/``.
3. serve: a local TorchServe (started before the flow, so the flow's deploy step serves the new
   champion), the champion release deployed, and three example requests.
Each phase is timed against its share of the 10-minute budget on 2 CPU cores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

# Seconds each phase may take on the reference machine (2 cores, no GPU): 10 minutes in all.
BUDGET = {"data": 60.0, "retrain": 420.0, "serve": 120.0}


def _data_phase(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    from components.command import data_folder
    from lifecycle import lineage

    data = root / data_folder(params)
    lineage.run_dvc(["repro", "data", "corrupt"], cwd=root)
    lineage.run_dvc(["push", "data", "corrupt"], cwd=root)
    out: dict[str, Any] = {}
    for folder in (data, data.with_name(f"{data.name}-c")):
        version = lineage.version_for(folder)  # what dvc.lock records: `dvc repro` has just hashed it
        out[folder.name] = version
        print(
            f"[data] {folder.relative_to(root)}: {version['files']} files, {version['size'] / 1e6:.1f} MB,"
            f" DVC md5 {version['md5']}"
        )
    manifest = json.loads((data / "manifest.json").read_text())
    counts = manifest["counts"]
    split_sizes = {s: (sum(c.values()) if isinstance(c, dict) else c) for s, c in counts.items()}
    print(
        f"[data] splits: {split_sizes}; classes: {len(manifest['classes'])}; sources: "
        + ", ".join(p["file"].rsplit("/", 1)[-1] for p in manifest["provenance"])
    )
    sheet = (data.with_name(f"{data.name}-c") / "contact_sheet.png").relative_to(root)
    print(f"[data] contact sheet (corruptions x severities): {sheet}")
    remotes = lineage.run_dvc(["remote", "list"], cwd=root).stdout.strip()
    print(f"[data] versioned in the DVC remote: {remotes}")
    return out


def _retrain_phase(preset: str | None, force: bool, deploy: bool) -> dict[str, Any]:
    from flows.settings import configure

    configure()
    from flows.retrain import demo as retrain_demo

    if deploy:  # a running TorchServe lets the flow's own deploy step serve a promoted release
        from cli.serve_demo import ensure_server

        print(f"[retrain] TorchServe for the deploy step: {ensure_server().inference_url}")
    where = retrain_demo(preset=preset, force=force, deploy=deploy)
    if where.get("skipped"):
        print(f"[retrain] {where['skipped']}")
    decision = where.get("decision") or {}
    if decision:
        print(
            f"[retrain] promotion: {'PROMOTED' if decision.get('promoted') else 'not promoted'}"
            f" - {decision.get('reason', '')}"
        )
    if where.get("evaluate_dir"):
        _print_adaptation(Path(where["evaluate_dir"]))
    print(f"[retrain] champion versions: {where['champion_versions']}")
    if where.get("deployment"):
        served = {name: d.get("version") for name, d in where["deployment"].items()}
        print(f"[retrain] the flow's deploy step serves: {served}")
    run = f"MLflow run {where['mlflow_run_id']}; " if where.get("mlflow_run_id") else ""
    print(f"[retrain] {run}look with: {where['mlflow_ui']}")
    print(f"[retrain] Prefect artifacts {where['prefect_artifacts']}: {where['prefect_ui']}")
    return where


def _print_adaptation(evaluate_dir: Path) -> None:
    """Method, corrupted mean, gain over frozen with its interval, seconds per image; the policy."""
    metrics = json.loads((evaluate_dir / "metrics.json").read_text())
    policy = json.loads((evaluate_dir / "adaptation_policy.json").read_text())
    methods = sorted({k.split("/")[1] for k in metrics if k.startswith("cost/")})
    print(f"[retrain] {'method':<18} {'corrupted':>9} {'gain over frozen [95% interval]':>34} {'s/image':>9}")
    for m in ["frozen", *[x for x in methods if x != "frozen"]]:
        acc = metrics.get(f"corrupted/{m}/mean_accuracy", float("nan"))
        gain = (
            "-"
            if m == "frozen"
            else f"{metrics[f'gain/{m}/mean']:+.3f} [{metrics[f'gain/{m}/ci_low']:+.3f}, "
            f"{metrics[f'gain/{m}/ci_high']:+.3f}]"
        )
        print(f"[retrain] {m:<18} {acc:9.3f} {gain:>34} {metrics[f'cost/{m}/seconds_per_image']:9.4f}")
    adapted = [x for x in methods if x != "frozen"]
    images = int(metrics.get(f"gain/{adapted[0]}/images", 0)) if adapted else 0
    print(f"[retrain] (paired by source image: {images} images; intervals resampled by image)")
    print(f"[retrain] adaptation policy {policy['version']}: {policy['method']} - {policy['reason']}")


def _serve_phase(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    from cli.serve_demo import serve_champion
    from components.command import data_folder

    data = root / data_folder(params)
    return serve_champion(
        corrupted=data.with_name(f"{data.name}-c"),
        test=data / "test",
        out=root / "runs" / "serving",
    )


def run(preset: str | None = None, force: bool = False, serve: bool = True, root: str | Path = ".") -> dict:
    """Run the demo's phases in order; return each phase's result and seconds."""
    from tessera.config import load_params

    rootp = Path(root).resolve()
    params = load_params(rootp / "params.yaml", preset)
    phases: list[tuple[str, Callable[[], Any]]] = [
        ("data", lambda: _data_phase(rootp, params)),
        ("retrain", lambda: _retrain_phase(preset, force, serve)),
    ]
    if serve:
        phases.append(("serve", lambda: _serve_phase(rootp, params)))
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name, phase in phases:
        print(f"\n=== {name} ===")
        start = time.perf_counter()
        results[name] = phase()
        seconds[name] = time.perf_counter() - start
    print("\n=== time (budget on 2 CPU cores) ===")
    for name, secs in seconds.items():
        print(f"{name:8s} {secs:7.1f} s   (budget {BUDGET[name]:.0f} s)")
    print(f"{'total':8s} {sum(seconds.values()):7.1f} s   (budget {sum(BUDGET.values()):.0f} s)")
    return {"results": results, "seconds": seconds}


def cli(
    preset: str = typer.Option(None, help="overlay params.<preset>.yaml (cpu, gpu)"),
    force: bool = typer.Option(False, help="retrain even if the champion saw this data and these params"),
    serve: bool = typer.Option(True, help="end with the champion served by a local TorchServe"),
) -> None:
    """Run the whole job end to end: data, retrain flow, registry, serving."""
    run(preset=preset, force=force, serve=serve)


if __name__ == "__main__":
    typer.run(cli)
