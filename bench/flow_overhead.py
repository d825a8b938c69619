"""Orchestration overhead: wall time of the ``retrain`` flow vs its steps' own work with tracking off.

One process, ``--rounds`` rounds. Every round runs, in alternating order (flow first in odd rounds,
direct first in even ones, so that drift of this machine's speed cancels):

* the flow: ``retrain(force=True, deploy=False)`` against a real Prefect server started once
  before the rounds (its start-up is reported separately), MLflow on SQLite in a fresh workspace.
  The task cache and the step folders are removed before each flow run, so every step computes
  (a cached step would make the flow look free; the script fails if one is cached);
* direct: the same components called in-process, ``pretrain.run``, ``train_generator.run`` (if
  ``generator.enabled``), ``adapt.run``, ``evaluate.run``, with the same params sections, the same
  inputs, the data version the flow uses (``lineage.version_for``, taken once before the rounds),
  and a ``NullTracker``: no MLflow, no DVC, no Prefect.

Overhead of a round = (flow wall - direct compute of the same round) / direct compute. So MLflow's
per-epoch metrics and artifact uploads made inside ``run()``, the data check (DVC re-hash), the
MLflow runs and registration, the gate and Prefect's bookkeeping all count as overhead. Printed:
every round, the median round and an interval for it (distribution-free: between the k-th smallest
and k-th largest round; with fewer than 6 rounds that is the min-max range, whose coverage is
printed: 75% for 3 rounds, 93.8% for 5). Also printed, for comparison, the old figure (flow wall
against the steps' time measured inside the tasks, tracking included). Target <= 15%.

Each part starts after an untimed 2 s pause (the previous part's background threads finish
first). The components' modules (and torch) are imported before the rounds: an import is a cost
of the process, not of the flow. The first flow round still pays MLflow's import, the fresh MLflow
database's schema and its one-off package scan; that shows in round 1.

    .venv/bin/python bench/flow_overhead.py [--rounds 3]            # the active params.yaml (needs data/)
    .venv/bin/python bench/flow_overhead.py --tiny [--rounds 3]     # a tiny generated project (minutes)
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tessera.adapt.stats import median_ci

ROOT = Path(__file__).resolve().parents[1]
TARGET_PCT = 15.0
SETTLE_S = 2.0


def verdict(low: float, high: float, target: float = TARGET_PCT) -> str:
    """'met' when the whole interval is at or below ``target``, 'not met' when above, else 'undecided'."""
    if high <= target:
        return "met"
    if low > target:
        return "not met"
    return "undecided"


def direct(root: Path, params: dict[str, Any], version: dict[str, Any], out: Path) -> dict[str, float]:
    """The flow's steps called in-process with tracking off; seconds per step."""
    from components import adapt, evaluate, pretrain, train_generator
    from components import data as data_step
    from tessera.config import section_of
    from tessera.tracking import NullTracker

    data_cfg = section_of(data_step.Config, params, "data")
    data = str(root / data_cfg.root / data_cfg.name)
    corrupted = f"{data}-c"
    seconds: dict[str, float] = {}

    def timed(step: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        (out / step).mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        fn(*args, out / step, tracker=NullTracker(), **kwargs)
        seconds[step] = time.perf_counter() - t0

    timed(
        "pretrain", pretrain.run, section_of(pretrain.Config, params, "pretrain"), data, data_version=version
    )
    encoder = str(out / "pretrain" / "encoder.pt")
    gen_cfg = section_of(train_generator.Config, params, "generator")
    if gen_cfg.enabled:
        timed("generator", train_generator.run, gen_cfg, data, encoder, data_version=version)
    timed("adapt", adapt.run, section_of(adapt.Config, params, "adapt"), data, encoder, data_version=version)
    classifier = str(out / "adapt" / "classifier.pt")
    timed(
        "evaluate", evaluate.run, section_of(evaluate.Config, params, "evaluate"), data, corrupted, classifier
    )
    return seconds


def flow(root: Path, preset: str | None, ws: Path) -> tuple[float, dict[str, float]]:
    """One ``retrain`` run, every step computed; its wall time and the steps' in-task seconds."""
    from flows.retrain import retrain

    for stale in (ws / "runs", ws / "prefect" / "results"):  # the task cache and step folders
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.perf_counter()
    summary = retrain(root=str(root), preset=preset, force=True, deploy=False)
    wall = time.perf_counter() - t0
    cached = [s for s, r in summary["steps"].items() if r["cached"]]
    if cached:
        raise RuntimeError(f"steps {cached} were taken from the cache: the round measures nothing")
    return wall, {s: r["seconds"] for s, r in summary["steps"].items()}


def settle(seconds: float = SETTLE_S) -> None:
    """Untimed pause before each part: the previous part's background threads (MLflow's system
    metrics, Prefect's log and event workers) finish instead of running into the next measurement."""
    gc.collect()
    time.sleep(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT), help="project root holding params.yaml and data/")
    p.add_argument("--preset", default=None, help="params preset (cpu, gpu)")
    p.add_argument("--tiny", action="store_true", help="use a tiny generated project (as in the tests)")
    p.add_argument("--rounds", type=int, default=3, help="flow + direct rounds (order alternates)")
    a = p.parse_args()
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    ws = tmp / "ws"
    os.environ["TESSERA_WORKSPACE"] = str(ws)
    os.environ.pop("TESSERA_MLFLOW_URI", None)
    root = Path(a.root).resolve()
    if a.tiny:
        sys.path.insert(0, str(ROOT / "tests" / "flows"))
        from conftest import make_project  # the tests' tiny project

        root = make_project(tmp / "project")
    from flows import settings

    settings.configure()  # before prefect is imported
    import components.adapt  # noqa: F401  (imports are the process's cost, not the flow's)
    import components.evaluate  # noqa: F401
    import components.pretrain  # noqa: F401
    import components.train_generator  # noqa: F401
    from components import data as data_step
    from flows import server
    from lifecycle import lineage
    from tessera.config import load_params, section_of

    params = load_params(root / "params.yaml", a.preset)
    data_cfg = section_of(data_step.Config, params, "data")
    data_dir = root / data_cfg.root / data_cfg.name
    if not data_dir.is_dir():
        raise SystemExit(
            f"{data_dir} does not exist: build it (`make demo` or `dvc repro data corrupt`) or use --tiny"
        )
    version = lineage.version_for(data_dir)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    api_url = server.start_server(port)
    startup = time.perf_counter() - t0
    os.environ["PREFECT_API_URL"] = api_url
    print(f"prefect server start-up: {startup:.1f} s", flush=True)
    rounds: list[dict[str, Any]] = []
    try:
        for r in range(a.rounds):
            flow_first = r % 2 == 0
            res: dict[str, Any] = {"order": "flow, direct" if flow_first else "direct, flow"}
            for part in ("flow", "direct") if flow_first else ("direct", "flow"):
                settle()
                if part == "flow":
                    res["wall"], res["in_task"] = flow(root, a.preset, ws)
                else:
                    out = tmp / "direct" / f"round{r + 1}"
                    res["direct"] = direct(root, params, version, out)
                    shutil.rmtree(out, ignore_errors=True)
            if set(res["in_task"]) != set(res["direct"]):
                raise RuntimeError(f"the flow ran {sorted(res['in_task'])}, direct {sorted(res['direct'])}")
            compute = sum(res["direct"].values())
            in_task = sum(res["in_task"].values())
            res["compute"] = compute
            res["overhead"] = 100 * (res["wall"] - compute) / compute
            res["old"] = 100 * (res["wall"] - in_task) / in_task
            rounds.append(res)
            steps = ", ".join(f"{s} {res['direct'][s]:.2f}/{res['in_task'][s]:.2f}" for s in res["direct"])
            print(
                f"round {r + 1} ({res['order']}): flow wall {res['wall']:.2f} s,"
                f" direct compute {compute:.2f} s"
                f" -> overhead {res['wall'] - compute:.2f} s = {res['overhead']:.1f} %"
                f" | steps direct/in-task s: {steps}"
                f" | old method (in-task {in_task:.2f} s, tracking inside) {res['old']:.1f} %",
                flush=True,
            )
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # send the flow logs while the server still answers
        server.stop(("server",))
    overheads = [x["overhead"] for x in rounds]
    low, high, cover = median_ci(overheads)
    med = statistics.median(overheads)
    wall = statistics.median(x["wall"] for x in rounds)
    compute = statistics.median(x["compute"] for x in rounds)
    old = statistics.median(x["old"] for x in rounds)
    ratios = [x["wall"] / x["compute"] for x in rounds]  # in round order
    kind = "min-max range" if cover < 0.95 else "order-statistic interval"
    print(
        f"retrain flow vs its steps with tracking off: {statistics.median(ratios):.2f}x"
        f" (median of {len(rounds)} rounds; rounds {' '.join(f'{x:.2f}' for x in ratios)});"
        f" overhead {med:.1f} % (rounds {' '.join(f'{x:.1f}' for x in overheads)};"
        f" {cover:.1%} {kind} of the median {low:.1f}-{high:.1f} %: target <= {TARGET_PCT:.0f} %"
        f" {verdict(low, high)}); median flow wall {wall:.2f} s, direct compute {compute:.2f} s;"
        f" old method (tracking counted as compute) {old:.1f} %"
    )
    print(f"RESULT flow_overhead {med:.1f} %")
    print(f"RESULT flow_overhead_low {low:.1f} %")
    print(f"RESULT flow_overhead_high {high:.1f} %")
    print(f"RESULT flow_wall {wall:.2f} s")
    print(f"RESULT prefect_server_startup {startup:.1f} s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
