"""A local Prefect stack: ``prefect server start``, a process work pool and its worker, the deployments.

Processes are started in their own session with their PID files under ``<workspace>/prefect/``, so
``tessera flows down`` stops exactly what ``tessera flows up`` started. The server's database is
SQLite in the workspace unless ``TESSERA_PREFECT_DB_URL`` names a PostgreSQL database.

A flow run started without a server (``tessera flows retrain`` before ``up``) gets a temporary one,
:func:`temporary_server`, which goes with the process that started it: at exit, on SIGTERM/SIGINT,
and even on kill -9 (a guard process beside the server watches its parent), and ``tessera flows
down`` finds it by its PID file. :func:`recover_crashed` marks what a dead flow left behind: Prefect
flow and task runs still Running (Crashed) and MLflow runs still RUNNING (FAILED).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flows import settings
from lifecycle import tracking

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


def _run(args: list[str], api_url: str, timeout_s: float = 300) -> str:
    command = f"prefect {' '.join(args)}"
    try:
        done = subprocess.run(
            [*_prefect(), *args],
            cwd=ROOT,
            env=_env(api_url),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{command} (against {api_url}) did not finish in {timeout_s:g}s") from e
    if done.returncode != 0:
        raise RuntimeError(
            f"{command} (against {api_url}) failed with exit code {done.returncode}:\n"
            f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return done.stdout


def _api(api_url: str, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
    """One request to the Prefect REST API (GET, or POST with a JSON ``body``); the parsed answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{api_url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as r:
        return json.loads(r.read())


def deploy_all(api_url: str, spec: Path = ROOT / "prefect.yaml") -> list[str]:
    """Create the process work pool (if needed) and register every deployment in ``prefect.yaml``
    with ``prefect --no-prompt deploy --all``; return their names (``flow/deployment``).

    The command runs in the project root with ``PREFECT_API_URL`` = ``api_url`` and ``TESSERA_ROOT``
    set (the pull step's working directory). A server whose FastAPI is 0.151 or later answers 422 to
    a request the command sends (a worker filter with null paging); Prefect 3.9 caps FastAPI below it.
    """
    import yaml

    with contextlib.suppress(RuntimeError):  # the pool already exists
        _run(["work-pool", "create", POOL, "--type", "process"], api_url)
    entries = (yaml.safe_load(spec.read_text()) or {}).get("deployments") or []
    wanted = {d["name"]: d.get("entrypoint") for d in entries}
    if not wanted:
        raise RuntimeError(f"{spec} has no deployments")
    try:
        _run(["--no-prompt", "deploy", "--all", "--prefect-file", str(spec)], api_url)
    except RuntimeError as e:
        hint = ""
        if "422" in str(e):
            hint = (
                "\n(a 422 from the server: its FastAPI is probably 0.151 or later, which Prefect "
                "3.9 does not support; see requirements.lock)"
            )
        raise RuntimeError(f"registering the deployments of {spec} failed: {e}{hint}") from e
    by_name = {"deployments": {"name": {"any_": list(wanted)}}, "limit": 200}
    found = [d for d in _api(api_url, "/deployments/filter", by_name) if d["entrypoint"] == wanted[d["name"]]]
    by_id = {"flows": {"id": {"any_": sorted({d["flow_id"] for d in found})}}, "limit": 200}
    flows = {f["id"]: f["name"] for f in _api(api_url, "/flows/filter", by_id)} if found else {}
    names = {d["name"]: f"{flows[d['flow_id']]}/{d['name']}" for d in found if d["flow_id"] in flows}
    missing = [name for name in wanted if name not in names]
    if missing:
        raise RuntimeError(
            f"prefect deploy --all exited 0 but {api_url} has no deployment {', '.join(missing)} of {spec}"
        )
    return [names[name] for name in wanted]


def start_worker(api_url: str) -> int:
    """Start a process worker polling the Tessera pool (flow runs inherit this environment)."""
    return _spawn(
        "worker", [*_prefect(), "worker", "start", "--pool", POOL, "--type", "process"], _env(api_url)
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group ``pgid`` (a session we started), SIGKILL what is left after
    ``timeout_s``; reap ``proc`` (its leader) when it is our child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader, or the group never empties
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def stop(names: tuple[str, ...] = ("worker", "server")) -> list[str]:
    """Stop the processes (and their children) that :func:`start_server`/:func:`start_worker` began,
    and every temporary server (:func:`temporary_server`) of this host."""
    stopped = []
    for name in names:
        pid_file = settings.prefect_home() / f"{name}.pid"
        if not pid_file.exists():
            continue
        _kill_group(int(pid_file.read_text()))  # its own session: the group id is its pid
        pid_file.unlink(missing_ok=True)
        stopped.append(name)
    api_url_file().unlink(missing_ok=True)
    stopped += [f"temporary server (pid {pid})" for pid in stop_temporary()]
    return stopped


# --- a temporary server for the flow runs of one process ------------------------------------------

GUARD_MARK = "tessera-temporary-prefect-server"
# The guard: leader of the server's session, it stops the server (its whole group) when the process
# that started it is gone, even by kill -9, and passes a SIGTERM on to it. argv: MARK OWNER CMD...
_GUARD = """
import os, signal, subprocess, sys, time
owner = int(sys.argv[2])
child = subprocess.Popen(sys.argv[3:])
def stop(*_):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(0, signal.SIGKILL)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, signal.SIG_IGN)
while child.poll() is None:
    if os.getppid() != owner:
        stop()
    time.sleep(0.5)
sys.exit(child.returncode)
"""
_TEMPORARY: dict[int, subprocess.Popen[bytes]] = {}  # guard pid -> its process, in this process
_OWN_URL: dict[int, str] = {}  # guard pid -> the API URL of its server
_HANDLED: dict[int, Any] = {}  # signal -> the handler it had before ours
_REGISTERED: list[bool] = []  # non-empty once atexit and the handler are in place


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _temporary_files() -> list[Path]:
    return sorted(settings.prefect_home().glob("temporary-*.json"))


def _is_guard(pid: int) -> bool:
    """Whether ``pid`` is still a guard we started (not another process that reuses the pid)."""
    try:
        return GUARD_MARK.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _group_alive(pid) and not Path("/proc/self").exists()


def temporary_server(timeout_s: float = settings.EPHEMERAL_STARTUP_TIMEOUT_S) -> str:
    """Start a Prefect API server (SQLite in the workspace) for this process's flow runs; return its
    API URL, also set as ``PREFECT_API_URL`` (call it before ``prefect`` is imported, or enter
    ``prefect.settings.temporary_settings``).

    The server runs in its own session under a guard, with ``<prefect home>/temporary-<pid>.json``
    naming it. It stops at normal exit (atexit), on SIGTERM (handler, then the signal's old
    behaviour), on SIGINT (KeyboardInterrupt, then atexit), when this process is killed (the guard
    sees its parent go) and on ``tessera flows down``.
    """
    for pid, url in list(_OWN_URL.items()):  # one per process
        if pid in _TEMPORARY and _TEMPORARY[pid].poll() is None and healthy(url):
            os.environ["PREFECT_API_URL"] = url
            return url
    stop_temporary(only_dead_owners=True)  # what a crashed process left, should its guard have died
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    server = [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app"]
    server += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    env = {k: v for k, v in _env().items() if k != "PREFECT_API_URL"}
    env.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"})
    home = settings.prefect_home()
    record = home / f"temporary-{os.getpid()}.json"
    with (home / "temporary.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _GUARD, GUARD_MARK, str(os.getpid()), *server],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _TEMPORARY[proc.pid], _OWN_URL[proc.pid] = proc, api_url
    me = tracking.owner_tags()
    owner = {"pid": proc.pid, "owner": os.getpid(), "owner_start": me.get(tracking.PID_START_TAG)}
    record.write_text(json.dumps({**owner, "host": socket.gethostname(), "api_url": api_url}))
    _stop_with_this_process()
    deadline = time.monotonic() + timeout_s
    while not healthy(api_url, timeout_s=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_own_temporary()
            raise RuntimeError(
                f"temporary Prefect server on {api_url} did not become healthy in {timeout_s}s; "
                f"see {home / 'temporary.log'}"
            )
        time.sleep(0.25)
    os.environ["PREFECT_API_URL"] = api_url
    return api_url


def stop_temporary(only_dead_owners: bool = False) -> list[int]:
    """Stop the temporary servers of this host (of dead owners only, if asked); return the guards'
    pids. A live owner's flow runs lose their server: ``tessera flows down`` means it."""
    stopped = []
    for path in _temporary_files():
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
            continue
        if info.get("host") != socket.gethostname():
            continue
        pid, owner = int(info["pid"]), int(info.get("owner", 0))
        if (
            only_dead_owners
            and owner != os.getpid()
            and tracking.process_alive(owner, info.get("owner_start"))
        ):
            continue
        if only_dead_owners and owner == os.getpid() and pid in _TEMPORARY:
            continue  # ours, in use
        if _is_guard(pid):
            _kill_group(pid, _TEMPORARY.get(pid))
            stopped.append(pid)
        _TEMPORARY.pop(pid, None)
        _OWN_URL.pop(pid, None)
        path.unlink(missing_ok=True)
    return stopped


def _stop_own_temporary() -> None:
    for pid, proc in list(_TEMPORARY.items()):
        _kill_group(pid, proc)
        _TEMPORARY.pop(pid, None)
        _OWN_URL.pop(pid, None)
    with contextlib.suppress(OSError):
        (settings.prefect_home() / f"temporary-{os.getpid()}.json").unlink(missing_ok=True)


def _on_signal(signum: int, frame: Any) -> None:
    """SIGTERM: stop our temporary servers, then do what the signal did before (die, by default)."""
    _stop_own_temporary()
    previous = _HANDLED.get(signum, signal.SIG_DFL)
    signal.signal(signum, previous)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        os.kill(os.getpid(), signum)


def _stop_with_this_process() -> None:
    """atexit (normal exit, SIGINT's KeyboardInterrupt) and SIGTERM stop our temporary servers.

    SIGINT keeps its KeyboardInterrupt, so a flow it interrupts still reports itself Crashed to the
    server before atexit stops it; Prefect's own SIGTERM handler, during a flow run, reports the
    crash and then passes the signal on to ours.
    """
    if _REGISTERED:
        return
    _REGISTERED.append(True)
    atexit.register(_stop_own_temporary)
    with contextlib.suppress(ValueError):  # signals can be set in the main thread only
        previous = signal.getsignal(signal.SIGTERM)
        # not over SIG_IGN (the process means to outlive SIGTERM) or a handler set outside Python
        if previous is not _on_signal and (previous == signal.SIG_DFL or callable(previous)):
            _HANDLED[signal.SIGTERM] = previous
            signal.signal(signal.SIGTERM, _on_signal)


# --- what a dead flow left behind --------------------------------------------------------------------


def owner_of(tags: list[str]) -> dict[str, str]:
    """The owner recorded in a flow run's tags (see :func:`claim_flow_run`)."""
    keys = (tracking.PID_TAG, tracking.PID_START_TAG, tracking.HOST_TAG)
    return {k: t.partition(":")[2] for t in tags for k in keys if t.startswith(f"{k}:")}


def claim_flow_run() -> None:
    """Tag the current flow run with its process (``tessera.pid:N``, ``tessera.host:H``), so the
    next flow run can tell when it died."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    owner = [f"{k}:{v}" for k, v in tracking.owner_tags().items()]
    tags = sorted({*ctx.flow_run.tags, *owner})
    with get_client(sync_client=True) as client:
        client.update_flow_run(ctx.flow_run.id, tags=tags)


def crash_dead_flow_runs(by: str = "the next flow run") -> list[str]:
    """Flow runs in state Running whose process (see :func:`claim_flow_run`) is dead on this host ->
    Crashed with the reason, and likewise their unfinished task runs and subflow runs. Returns the
    ids of the flow runs it marked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters as f
    from prefect.client.schemas.objects import StateType
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    current = ctx.flow_run.id if ctx is not None and ctx.flow_run is not None else None
    running = f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=[StateType.RUNNING]))
    marked: list[str] = []
    with get_client(sync_client=True) as client:
        for run in _read_all(client.read_flow_runs, flow_run_filter=f.FlowRunFilter(state=running)):
            owner = owner_of(run.tags)
            if run.id == current or tracking.owner_alive(owner) is not False:
                continue
            reason = tracking.crash_reason(owner, by)
            marked += _crash(client, run.id, reason, f, StateType)
    return marked


def _read_all(read: Any, page: int = 200, **filters: Any) -> list[Any]:
    """Every row a ``read_flow_runs``/``read_task_runs`` filter matches, page by page (sort and limit
    always given: a server on FastAPI 0.151 or later answers 422 to null paging)."""
    from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort

    sort = TaskRunSort.ID_DESC if "task_run_filter" in filters else FlowRunSort.ID_DESC
    rows: list[Any] = []
    while True:
        batch = read(**filters, sort=sort, limit=page, offset=len(rows))
        rows += batch
        if len(batch) < page:
            return rows


def _crash(client: Any, flow_run_id: Any, reason: str, f: Any, StateType: Any) -> list[str]:
    from prefect.states import Crashed

    client.set_flow_run_state(flow_run_id, Crashed(message=reason), force=True)
    unfinished = [StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED, StateType.PAUSED]
    task_runs = _read_all(
        client.read_task_runs,
        flow_run_filter=f.FlowRunFilter(id=f.FlowRunFilterId(any_=[flow_run_id])),
        task_run_filter=f.TaskRunFilter(
            state=f.TaskRunFilterState(type=f.TaskRunFilterStateType(any_=unfinished))
        ),
    )
    for task_run in task_runs:
        client.set_task_run_state(task_run.id, Crashed(message=reason), force=True)
    marked = [str(flow_run_id)]
    subflows = _read_all(
        client.read_flow_runs,
        flow_run_filter=f.FlowRunFilter(
            parent_flow_run_id=f.FlowRunFilterParentFlowRunId(any_=[flow_run_id]),
            state=f.FlowRunFilterState(type=f.FlowRunFilterStateType(any_=unfinished)),
        ),
    )
    for sub in subflows:
        marked += _crash(client, sub.id, reason, f, StateType)
    return marked


def recover_crashed(
    mlflow_cfg: Mapping[str, Any] | None = None, by: str = "the next flow run"
) -> dict[str, Any]:
    """Mark what dead flow runs of this host left: MLflow runs still RUNNING (FAILED, lifecycle's
    :func:`~lifecycle.tracking.fail_crashed_runs`) and Prefect runs still Running (Crashed).
    Best effort: a failure is returned, not raised (it must not stop the flow run that asks)."""
    out: dict[str, Any] = {"mlflow_runs": [], "flow_runs": []}
    try:
        cfg = tracking.Config(**(mlflow_cfg or {}))
        client = tracking.client(cfg)
        out["mlflow_runs"] = tracking.fail_crashed_runs(client, tracking.experiment_id(client, cfg), by)
    except Exception as e:  # noqa: BLE001 - best effort
        out["errors"] = [f"MLflow: {type(e).__name__}: {e}"]
    try:
        out["flow_runs"] = crash_dead_flow_runs(by)
    except Exception as e:  # noqa: BLE001 - best effort
        out.setdefault("errors", []).append(f"Prefect: {type(e).__name__}: {e}")
    return out
