"""Start, stop and inspect a local TorchServe (0.12) with its own ports, TMPDIR, logs and model store.

Everything of one instance lives in its *home* folder (default ``.tessera/serving``)::

    home/config.properties   rendered from serving/config/{local,config}.properties + ports + paths
    home/model-store/        the .mar archives
    home/tmp/                TMPDIR (TorchServe keeps its PID file and worker sockets here)
    home/logs/               TorchServe's logs and the launcher's output
    home/key_file.json       the token keys (production config only), written by TorchServe
    home/server.json         what this module started: ports, config, pid

Two instances never share a TMPDIR, so their PID files and sockets cannot collide.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tessera.errors import TesseraError

CONFIG_DIR = Path(__file__).resolve().parent / "config"
CONFIGS = {"local": CONFIG_DIR / "local.properties", "production": CONFIG_DIR / "config.properties"}
LOG_CONFIG = CONFIG_DIR / "log4j2.xml"  # one rotated file per log, warnings and errors on stdout
KEY_ENV = {"management": "TESSERA_TS_MANAGEMENT_KEY", "inference": "TESSERA_TS_INFERENCE_KEY"}
DEFAULT_HOME = Path(".tessera/serving")


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
    }
    lines = [ln for ln in template.read_text().splitlines() if ln.split("=", 1)[0].strip() not in own]
    lines += [f"{k}={v}" for k, v in own.items()]
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
) -> Server:
    """Start TorchServe in ``home`` with the ``local`` or ``production`` config (or a file path).

    ``models`` maps names to archives in the model store to load at start. Returns once ``/ping``
    answers healthy (with the inference key under token authorisation).
    """
    home = Path(home).resolve()
    template = CONFIGS.get(config, Path(config))
    if not template.is_file():
        raise ServingError(f"config {config!r} not found; use local, production or a .properties path")
    server = Server(home, ports or Ports(), config, host=host)
    if (home / "server.json").is_file() and Server.load(home).ping():
        raise ServingError(f"a TorchServe already runs from {home}: `tessera serve down` first")
    for sub in ("model-store", "tmp", "logs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
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
        "--log-config",
        str(LOG_CONFIG),
    ]
    if models:
        cmd += ["--models", *[f"{k}={v}" for k, v in models.items()]]
    with open(home / "logs" / "torchserve.out", "ab") as log:
        subprocess.run(cmd, cwd=home, env=_env(home), stdout=log, stderr=subprocess.STDOUT, check=True)
    pid_file = home / "tmp" / ".model_server.pid"
    server.pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None
    server.save()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.ping():
                return server
            if server.pid is not None and not _alive(server.pid):
                break
            time.sleep(0.25)
    except BaseException:  # never leave an orphan server behind (Ctrl-C, unexpected errors)
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


def stop(home: str | Path = DEFAULT_HOME, timeout: float = 60.0) -> bool:
    """Stop the TorchServe started from ``home``; ``False`` if none was running."""
    home = Path(home).resolve()
    if not (home / "tmp").is_dir():
        return False
    pid_file = home / "tmp" / ".model_server.pid"
    pid = int(pid_file.read_text().strip()) if pid_file.is_file() else None
    if (home / "server.json").is_file():
        pid = Server.load(home).pid or pid
    was_running = pid is not None and _alive(pid)
    with open(home / "logs" / "torchserve.out", "ab") as log:
        subprocess.run(
            [_torchserve(), "--stop", "--foreground"],
            cwd=home,
            env=_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout + 10,
            check=False,
        )
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    (home / "server.json").unlink(missing_ok=True)
    return was_running


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
