"""A local Prefect stack: ``prefect server start``, a process work pool and its worker, the deployments.

Processes are started in their own session with their PID files under ``<workspace>/prefect/``, so
``tessera flows down`` stops exactly what ``tessera flows up`` started. The server's database is
SQLite in the workspace unless ``TESSERA_PREFECT_DB_URL`` names a PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows import settings

POOL = "tessera-process"
ROOT = Path(__file__).resolve().parents[1]


def _prefect() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


def _env(api_url: str | None = None) -> dict[str, str]:
    env = {**os.environ, **settings.configure(), "TESSERA_ROOT": str(ROOT)}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def api_url_file() -> Path:
    return settings.prefect_home() / "api_url"


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    """True when the Prefect API answers ``/health``."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def wait_healthy(api_url: str, timeout_s: float = 120.0) -> str:
    """Wait until the server at ``api_url`` answers; return the URL."""
    deadline = time.monotonic() + timeout_s
    while not healthy(api_url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prefect server {api_url} did not answer /health in {timeout_s}s")
        time.sleep(1)
    return api_url


def running_api_url() -> str | None:
    """The API URL of the server ``tessera flows up`` started, if it is still healthy."""
    path = api_url_file()
    if path.exists():
        url = path.read_text().strip()
        if healthy(url):
            return url
    return None


def _spawn(name: str, args: list[str], env: dict[str, str]) -> int:
    home = settings.prefect_home()
    log = (home / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    (home / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def start_server(port: int = 4200, timeout_s: float = 90.0) -> str:
    """Start ``prefect server start`` on 127.0.0.1:``port`` and wait until it is healthy."""
    api_url = f"http://127.0.0.1:{port}/api"
    if healthy(api_url):
        api_url_file().write_text(api_url)
        return api_url
    _spawn("server", [*_prefect(), "server", "start", "--host", "127.0.0.1", "--port", str(port)], _env())
    deadline = time.monotonic() + timeout_s
    while not healthy(api_url):
        if time.monotonic() > deadline:
            log = settings.prefect_home() / "server.log"
            raise RuntimeError(f"Prefect server did not become healthy in {timeout_s}s; see {log}")
        time.sleep(0.5)
    api_url_file().write_text(api_url)
    return api_url


def _run(args: list[str], api_url: str) -> str:
    done = subprocess.run(
        [*_prefect(), *args], cwd=ROOT, env=_env(api_url), capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def deploy_all(api_url: str, spec: Path = ROOT / "prefect.yaml") -> list[str]:
    """Create the process work pool (if needed) and register every deployment in ``prefect.yaml``.

    Registered through the Prefect client rather than ``prefect deploy``: with the pinned FastAPI the
    server answers 422 to one request that command always sends (a worker filter with null paging).
    """
    import asyncio

    import yaml

    with contextlib.suppress(RuntimeError):  # the pool already exists
        _run(["work-pool", "create", POOL, "--type", "process"], api_url)
    text = spec.read_text().replace("{{ $TESSERA_ROOT }}", str(ROOT))
    doc = yaml.safe_load(text)
    os.environ["PREFECT_API_URL"] = api_url
    return asyncio.run(_register(doc))


async def _register(doc: dict) -> list[str]:  # type: ignore[type-arg]
    import importlib

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.utilities.callables import parameter_schema

    names = []
    async with get_client() as client:
        for d in doc["deployments"]:
            module, _, attr = d["entrypoint"].partition(":")
            flow_obj = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
            flow_id = await client.create_flow_from_name(flow_obj.name)
            schedules = [
                DeploymentScheduleCreate(
                    schedule=CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC")),
                    active=s.get("active", True),
                )
                for s in d.get("schedules") or []
            ]
            await client.create_deployment(
                flow_id,
                d["name"],
                description=d.get("description"),
                entrypoint=d["entrypoint"],
                work_pool_name=d["work_pool"]["name"],
                parameters=d.get("parameters") or {},
                schedules=schedules,
                concurrency_limit=d.get("concurrency_limit"),
                path=str(ROOT),
                pull_steps=doc.get("pull"),
                parameter_openapi_schema=parameter_schema(flow_obj).model_dump(),
            )
            names.append(f"{flow_obj.name}/{d['name']}")
    return names


def start_worker(api_url: str) -> int:
    """Start a process worker polling the Tessera pool (flow runs inherit this environment)."""
    return _spawn(
        "worker", [*_prefect(), "worker", "start", "--pool", POOL, "--type", "process"], _env(api_url)
    )


def stop(names: tuple[str, ...] = ("worker", "server")) -> list[str]:
    """Stop the processes (and their children) that :func:`start_server`/:func:`start_worker` began."""
    stopped = []
    for name in names:
        pid_file = settings.prefect_home() / f"{name}.pid"
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)  # its own session: the group id is its pid
            for _ in range(50):
                os.killpg(pid, 0)
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        stopped.append(name)
    api_url_file().unlink(missing_ok=True)
    return stopped
