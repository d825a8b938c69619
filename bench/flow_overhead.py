"""Orchestration overhead: wall time of the ``retrain`` flow vs the sum of its components' own compute.

The flow runs against a real Prefect server started first (its start-up is reported separately), with
MLflow on SQLite in a fresh workspace, ``force=True`` and no deployment. The components' compute is
the time spent inside each step's ``run()`` (measured by the task); everything else (data check, DVC
md5, MLflow runs/artifacts/registration, the gate, Prefect bookkeeping) is overhead. Target <= 15%.

    .venv/bin/python bench/flow_overhead.py                 # the active params.yaml (demo preset)
    .venv/bin/python bench/flow_overhead.py --tiny          # a tiny generated project (seconds)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(ROOT), help="project root holding params.yaml and data/")
    p.add_argument("--preset", default=None, help="params preset (cpu, gpu)")
    p.add_argument("--tiny", action="store_true", help="use a tiny generated project (as in the tests)")
    a = p.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    os.environ["TESSERA_WORKSPACE"] = str(ws / "ws")
    os.environ.pop("TESSERA_MLFLOW_URI", None)
    root = Path(a.root)
    if a.tiny:
        sys.path.insert(0, str(ROOT / "tests" / "flows"))
        from conftest import make_project  # the tests' tiny project

        root = make_project(ws / "project")
    from flows import server, settings

    settings.configure()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    api_url = server.start_server(port)
    startup = time.perf_counter() - t0
    os.environ["PREFECT_API_URL"] = api_url
    try:
        from flows.retrain import retrain

        t0 = time.perf_counter()
        summary = retrain(root=str(root), preset=a.preset, force=True, deploy=False)
        wall = time.perf_counter() - t0
    finally:
        server.stop(("server",))
    compute = sum(s["seconds"] for s in summary["steps"].values())
    overhead = (wall - compute) / compute
    print(f"prefect server start-up: {startup:.1f} s")
    for step, s in summary["steps"].items():
        print(f"  {step:<10} {s['seconds']:8.1f} s")
    print(f"retrain wall {wall:.1f} s, components' compute {compute:.1f} s, overhead {wall - compute:.1f} s")
    print(f"RESULT flow_overhead {100 * overhead:.1f} %")
    print(f"RESULT flow_wall {wall:.1f} s")
    print(f"RESULT prefect_server_startup {startup:.1f} s")


if __name__ == "__main__":
    main()
