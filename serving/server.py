"""Start, stop and inspect a local TorchServe (0.12) with its own ports, TMPDIR, logs and model store.

Everything of one instance lives in its *home* folder (default ``.tessera/serving``)::

    home/config.properties   rendered from serving/config/{local,config}.properties + ports + paths
    home/model-store/        the .mar archives
    home/tmp/                TMPDIR (TorchServe keeps its PID file and worker sockets here)
    home/logs/               TorchServe's logs and the launcher's output
    home/key_file.json       the token keys (production config only), written by TorchServe
    home/server.json         what this module started: ports, config, pid
    home/registered.json     what is registered (versions, archives, workers, defaults): written by
                             serving.management after every change, read back by ``start``

Two instances never share a TMPDIR, so their PID files and sockets cannot collide.

A restart (clean stop, crash, ``kill -9`` of the frontend) serves what was registered before:
``start`` re-registers the versions of ``registered.json`` from the model store and makes the
recorded defaults default again (TorchServe's own snapshots stay off with ``--ncs``). A PID file
left by a dead frontend is removed, never mistaken for a running server.

``python -m serving.server`` runs one instance in the foreground (the containers' entry point):
start, then a token-free health endpoint, ``GET /ping`` on ``--health-port``, that answers 200 only
while TorchServe's own ``/ping`` (asked with the inference key) says Healthy; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tessera.errors import TesseraError

CONFIG_DIR = Path(__file__).resolve().parent / "config"
CONFIGS = {"local": CONFIG_DIR / "local.properties", "production": CONFIG_DIR / "config.properties"}
LOG_CONFIG = CONFIG_DIR / "log4j2.xml"  # one rotated file per log, warnings and errors on stdout
KEY_ENV = {"management": "TESSERA_TS_MANAGEMENT_KEY", "inference": "TESSERA_TS_INFERENCE_KEY"}
DEFAULT_HOME = Path(".tessera/serving")
FRONTEND_CLASS = "org.pytorch.serve.ModelServer"  # the Java main class in the frontend's command line
log = logging.getLogger(__name__)


class ServingError(TesseraError):
    """TorchServe could not be started, reached or told what to do."""


@dataclass(frozen=True)
class Ports:
    """The five ports of one TorchServe instance."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071

    @classmethod
    def free(cls) -> Ports:
        """Five ports the OS says are free now (for tests and side-by-side instances)."""
        socks = [socket.socket() for _ in range(5)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


@dataclass
class Server:
    """A TorchServe instance this module started (or found in ``home/server.json``)."""

    home: Path
    ports: Ports
    config: str = "local"
    pid: int | None = None
    host: str = "127.0.0.1"

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    @property
    def model_store(self) -> Path:
        return self.home / "model-store"

    def key(self, kind: str) -> str | None:
        """The ``management`` or ``inference`` token: the environment variable, else the key file.

        ``None`` when token authorisation is off. The key is never logged or printed.
        """
        env = os.environ.get(KEY_ENV[kind])
        if env:
            return env
        path = self.home / "key_file.json"
        if not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text())[kind]["key"])
        except (ValueError, KeyError, TypeError) as e:
            raise ServingError(f"{path} has no {kind} key; is it TorchServe's key file?") from e

    def headers(self, kind: str = "inference") -> dict[str, str]:
        """``Authorization: Bearer <key>`` when token authorisation is on, else nothing."""
        key = self.key(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def ping(self, timeout: float = 2.0) -> bool:
        """Whether the inference API answers ``/ping`` as healthy."""
        import requests

        try:
            r = requests.get(f"{self.inference_url}/ping", headers=self.headers(), timeout=timeout)
            return r.status_code == 200 and r.json().get("status") == "Healthy"
        except (requests.RequestException, ValueError, ServingError):  # key file may be mid-write
            return False

    def save(self) -> None:
        data = {**asdict(self), "home": str(self.home), "ports": asdict(self.ports)}
        (self.home / "server.json").write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, home: str | Path = DEFAULT_HOME) -> Server:
        path = Path(home) / "server.json"
        if not path.is_file():
            raise ServingError(f"no TorchServe recorded in {home}: start one with `tessera serve up`")
        data = json.loads(path.read_text())
        data["home"], data["ports"] = Path(data["home"]), Ports(**data["ports"])
        return cls(**data)


def allowed_urls(store: Path) -> str:
    """TorchServe's ``allowed_urls``: ``file://`` archives directly in ``store``, nothing else.

    TorchServe matches each comma-separated regex against the whole URL (case-insensitively) and
    refuses a ``file://``/``http(s)://`` URL that none matches; a bare archive name (what
    ``management.register`` sends) is looked up in the model store and needs no pattern. Every
    character of the path but letters, digits and ``/`` is escaped (a comma as ``\\x2c``: the list is
    split on commas).
    """
    path = "".join(
        c if c.isalnum() or c == "/" else ("\\x2c" if c == "," else "\\" + c) for c in str(store).rstrip("/")
    )
    return f"file://{path}/[^/]+\\.mar"


def render_config(template: Path, server: Server) -> Path:
    """Write ``home/config.properties``: the template with this instance's addresses and paths."""
    own = {
        "inference_address": f"http://{'0.0.0.0' if server.host == '0.0.0.0' else '127.0.0.1'}"
        f":{server.ports.inference}",
        "management_address": server.management_url,
        "metrics_address": server.metrics_url,
        "grpc_inference_port": str(server.ports.grpc_inference),
        "grpc_management_port": str(server.ports.grpc_management),
        "model_store": str(server.model_store),
        "metrics_config": str(CONFIG_DIR / "metrics.yaml"),
        "allowed_urls": allowed_urls(server.model_store),
    }
    lines = [ln for ln in template.read_text().splitlines() if ln.split("=", 1)[0].strip() not in own]
    # a .properties value takes ``\\`` for a backslash (Java's Properties.load drops a lone one)
    lines += ["{}={}".format(k, v.replace("\\", "\\\\")) for k, v in own.items()]
    out = server.home / "config.properties"
    out.write_text("\n".join(lines) + "\n")
    return out


def _env(home: Path) -> dict[str, str]:
    tmp = home / "tmp"
    env = dict(os.environ)
    env.update(
        TMPDIR=str(tmp), TEMP=str(tmp), LOG_LOCATION=str(home / "logs"), METRICS_LOCATION=str(home / "logs")
    )
    return env


def _torchserve() -> str:
    local = Path(sys.executable).parent / "torchserve"
    found = str(local) if local.exists() else shutil.which("torchserve")
    if not found:
        raise ServingError("torchserve not found: install the locked environment (make setup)")
    return found


def start(
    home: str | Path = DEFAULT_HOME,
    config: str = "local",
    ports: Ports | None = None,
    models: dict[str, str] | None = None,
    timeout: float = 90.0,
    host: str = "127.0.0.1",
    restore: bool = True,
    console: bool = False,
) -> Server:
    """Start TorchServe in ``home`` with the ``local`` or ``production`` config (or a file path).

    ``models`` maps names to archives in the model store to load at start. With ``restore`` the
    versions recorded in ``home/registered.json`` (what was registered when this home's server last
    changed, see ``serving.management.restore``) are registered again and their defaults set, so a
    restart serves what it served before. Returns once ``/ping`` answers healthy (with the inference
    key under token authorisation) and the recorded versions are back. ``console`` (containers):
    TorchServe's own log configuration and its output on this process's standard output, for the
    runtime's log collector, instead of ``log4j2.xml`` and ``home/logs/torchserve.out``.
    """
    home = Path(home).resolve()
    template = CONFIGS.get(config, Path(config))
    if not template.is_file():
        raise ServingError(f"config {config!r} not found; use local, production or a .properties path")
    server = Server(home, ports or Ports(), config, host=host)
    if (home / "server.json").is_file() and Server.load(home).ping():
        raise ServingError(f"a TorchServe already runs from {home}: `tessera serve down` first")
    running = _frontend_pid(home)  # also removes a PID file a killed frontend left behind
    if running is not None:
        raise ServingError(
            f"a TorchServe (pid {running}) already runs from {home} but does not answer: "
            "`tessera serve down` first"
        )
    for sub in ("model-store", "tmp", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(home / "tmp" / "models", ignore_errors=True)  # archives a killed frontend unpacked
    (home / "key_file.json").unlink(missing_ok=True)
    cfg = render_config(template, server)
    cmd = [
        _torchserve(),
        "--start",
        "--ncs",
        "--model-store",
        str(server.model_store),
        "--ts-config",
        str(cfg),
    ]
    if not console:
        cmd += ["--log-config", str(LOG_CONFIG)]
    if models:
        cmd += ["--models", *[f"{k}={v}" for k, v in models.items()]]
    if console:
        sys.stdout.flush()
        subprocess.run(cmd, cwd=home, env=_env(home), check=True)
    else:
        with open(home / "logs" / "torchserve.out", "ab") as out:
            subprocess.run(cmd, cwd=home, env=_env(home), stdout=out, stderr=subprocess.STDOUT, check=True)
    server.pid = _read_pid(home)
    server.save()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.ping():
                if restore:
                    from serving import management  # management imports this module

                    management.restore(server)
                return server
            if server.pid is not None and not _alive(server.pid):
                break
            time.sleep(0.25)
    except BaseException:  # never leave an orphan server behind (Ctrl-C, a failed restore, ...)
        stop(home)
        raise
    tail = "\n".join(
        f"--- {name}:\n" + (home / "logs" / name).read_text(errors="replace")[-2000:]
        for name in ("torchserve.out", "ts_log.log")
        if (home / "logs" / name).is_file()
    )
    stop(home)
    raise ServingError(f"TorchServe did not become healthy within {timeout:.0f}s; log tail:\n{tail}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
        os.kill(pid, sig)


def _read_pid(home: Path) -> int | None:
    try:
        return int((home / "tmp" / ".model_server.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_frontend(pid: int, home: Path) -> bool:
    """Whether ``pid`` is the Java frontend started with this home's config (not a recycled PID)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # no /proc (macOS): trust a live PID, TorchServe's launcher checks the class name
        return _alive(pid) and not Path("/proc/self").exists()
    return FRONTEND_CLASS in argv and str(home / "config.properties") in argv  # empty for a zombie


def _frontend_pid(home: Path) -> int | None:
    """The PID of this home's running frontend, from its PID file or ``server.json``; else None.

    A PID file whose process is gone or is something else (after ``kill -9`` of the frontend, a
    crash, a reboot) is removed, so neither ``start`` nor TorchServe's launcher is blocked by it and
    ``torchserve --stop`` cannot signal a process that took the PID over.
    """
    pid_file = home / "tmp" / ".model_server.pid"
    recorded = None
    if (home / "server.json").is_file():
        try:
            recorded = Server.load(home).pid
        except (ServingError, ValueError, TypeError):
            recorded = None
    for pid in (_read_pid(home), recorded):
        if pid is not None and _is_frontend(pid, home):
            return pid
    if pid_file.exists():
        log.warning("removing the stale TorchServe PID file %s", pid_file)
        pid_file.unlink(missing_ok=True)
    return None


def stop(home: str | Path = DEFAULT_HOME, timeout: float = 60.0) -> bool:
    """Stop the TorchServe started from ``home``; ``False`` if none was running.

    SIGTERM to the frontend (what ``torchserve --stop`` sends: it stops its workers and exits),
    SIGKILL if it is still there after ``timeout`` seconds.
    """
    home = Path(home).resolve()
    if not (home / "tmp").is_dir():
        return False
    pid = _frontend_pid(home)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _is_frontend(pid, home) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _is_frontend(pid, home):
            log.warning("TorchServe (pid %d) did not stop within %.0fs: killing it", pid, timeout)
            _signal(pid, signal.SIGKILL)
    (home / "tmp" / ".model_server.pid").unlink(missing_ok=True)
    (home / "server.json").unlink(missing_ok=True)
    (home / "key_file.json").unlink(missing_ok=True)
    return pid is not None


def status(home: str | Path = DEFAULT_HOME) -> dict[str, Any]:
    """Whether the instance of ``home`` is healthy, its addresses and its models with versions."""
    import requests

    try:
        server = Server.load(home)
    except ServingError:
        return {"running": False, "home": str(Path(home).resolve())}
    info: dict[str, Any] = {
        "running": server.ping(),
        "home": str(server.home),
        "config": server.config,
        "inference": server.inference_url,
        "management": server.management_url,
        "metrics": server.metrics_url,
        "models": {},
    }
    if info["running"]:
        try:
            mgmt = server.headers("management")
            names = requests.get(f"{server.management_url}/models", headers=mgmt, timeout=30).json()
            for m in names.get("models", []):
                url = f"{server.management_url}/models/{m['modelName']}"
                default = requests.get(url, headers=mgmt, timeout=30).json()[0].get("modelVersion")
                versions = requests.get(f"{url}/all", headers=mgmt, timeout=30).json()
                info["models"][m["modelName"]] = [
                    {
                        "version": v.get("modelVersion"),
                        "default": v.get("modelVersion") == default,
                        "workers": len(v.get("workers", [])),
                    }
                    for v in versions
                ]
        except (requests.RequestException, ValueError) as e:
            info["error"] = f"could not list models: {e}"
    return info


# -- the foreground runner (containers) ---------------------------------------------------------
class _Health(BaseHTTPRequestHandler):
    """``GET /ping``: 200 ``{"status": "Healthy"}`` while TorchServe's own ``/ping`` (asked with the
    inference key) is healthy, else 503. No token: it tells a probe only whether the server is up."""

    server_version = "tessera-health"
    target: Server  # set on the subclass made by ``serve_health``

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] != "/ping":
            self._send(404, {"code": 404, "message": "only /ping here"})
            return
        ok = self.target.ping()
        self._send(200 if ok else 503, {"status": "Healthy" if ok else "Unhealthy"})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # a probe every few seconds: not worth a log line each


def serve_health(server: Server, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The token-free health endpoint of ``server`` on ``host:port``, answered from a daemon thread."""
    handler = type("Health", (_Health,), {"target": server})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="tessera-health", daemon=True).start()
    return httpd


def run(
    home: str | Path,
    config: str,
    ports: Ports,
    health_port: int,
    host: str = "127.0.0.1",
    health_host: str | None = None,
    timeout: float = 300.0,
) -> int:
    """Start (and restore) TorchServe, serve the health endpoint, return when the frontend exits.

    SIGTERM/SIGINT stop TorchServe cleanly (0); a frontend that dies on its own returns 1, so the
    container restarts and ``start`` restores the registered models.
    """
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    srv = start(home, config, ports, timeout=timeout, host=host, console=True)
    httpd = serve_health(srv, health_port, health_host or host)
    log.info("TorchServe up in %s; health on %s:%d/ping", srv.home, health_host or host, health_port)
    try:
        while not stopping.wait(1.0):
            _reap()
            if srv.pid is None or not _is_frontend(srv.pid, srv.home):
                log.error("the TorchServe frontend exited; see %s", srv.home / "logs")
                return 1
        return 0
    finally:
        httpd.shutdown()
        stop(srv.home)
        _reap()


def _reap() -> None:
    """Collect exited children (as PID 1 in a container the frontend is re-parented to us)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def arg_parser() -> argparse.ArgumentParser:
    """The options of ``python -m serving.server`` (the containers' command lines use them)."""
    parser = argparse.ArgumentParser(prog="python -m serving.server", description=run.__doc__)
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME)
    parser.add_argument("--config", default="production", help="local, production or a .properties")
    parser.add_argument("--host", default="127.0.0.1", help="inference bind address (0.0.0.0: network)")
    parser.add_argument("--port", type=int, default=8080, help="inference port")
    parser.add_argument("--management-port", type=int, default=None, help="default: --port + 1")
    parser.add_argument("--metrics-port", type=int, default=None, help="default: --port + 2")
    parser.add_argument("--grpc-port", type=int, default=7070, help="gRPC inference port")
    parser.add_argument("--grpc-management-port", type=int, default=None, help="default: --grpc-port + 1")
    parser.add_argument("--health-port", type=int, default=8083, help="GET /ping here, no token")
    parser.add_argument("--health-host", default=None, help="health bind address (default: --host)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to become healthy")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = args.port
    ports = Ports(
        p,
        args.management_port or p + 1,
        args.metrics_port or p + 2,
        args.grpc_port,
        args.grpc_management_port or args.grpc_port + 1,
    )
    return run(args.home, args.config, ports, args.health_port, args.host, args.health_host, args.timeout)


if __name__ == "__main__":  # run the importable module's main, so management sees the same classes
    from serving.server import main as _main

    sys.exit(_main())
