"""A restarted TorchServe serves what it served before; the production instance's health, auth and
model-store limits (real TorchServe instances: own ports, TMPDIR and home, as the fixtures make)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from serving_helpers import png, wait_ready

from serving import management, package, server

pytestmark = pytest.mark.integration
NAME = "tessera-encoder"
PNG = {"Content-Type": "image/png"}
ROOT = Path(__file__).resolve().parents[2]


def _answers(srv: server.Server, version: str | None = None) -> str:
    r = management.predict(srv, NAME, png(1), PNG, version)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def _same_as_before(srv: server.Server) -> None:
    """v1 and v2 registered, v2 (registered second) the default, both answering; no redeploy."""
    assert sorted(management.versions(srv, NAME)) == ["1", "2"]
    assert management.default_version(srv, NAME) == "2"
    assert _answers(srv) == "2"
    assert _answers(srv, "1") == "1"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, ckpts: dict[str, Any]) -> Any:
    """A local TorchServe with v1 and v2 of the encoder registered over the API, v2 made default."""
    home = tmp_path_factory.mktemp("restart")
    cfg = package.Config(max_images=4)
    mars = [
        package.package(ckpts[k], NAME, v, home / "model-store", cfg)
        for k, v in (("encoder", 1), ("encoder2", 2))
    ]
    srv = server.start(home, "local", server.Ports.free())
    try:
        for mar in mars:
            management.register(srv, mar)
        management.set_default(srv, NAME, "2")
        wait_ready(srv, NAME)
        _same_as_before(srv)
        yield home
    finally:
        server.stop(home)


def test_serving_restart_after_stop_serves_the_same_versions(deployed: Path) -> None:
    assert server.stop(deployed)
    assert not (deployed / "tmp" / ".model_server.pid").exists()
    srv = server.start(deployed, "local", server.Ports.free())  # new ports: nothing is reused but the home
    _same_as_before(srv)
    record = management.registered(srv)[NAME]
    assert record["default"] == "2" and set(record["versions"]) == {"1", "2"}


def test_serving_restart_after_kill_9_of_the_frontend(deployed: Path) -> None:
    srv = server.Server.load(deployed)
    pid = int((deployed / "tmp" / ".model_server.pid").read_text())
    assert pid == srv.pid and srv.ping()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while server._is_frontend(pid, deployed) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not srv.ping()
    assert (deployed / "tmp" / ".model_server.pid").exists()  # left behind: must not block the start
    srv = server.start(deployed, "local", server.Ports.free())
    assert srv.pid != pid
    _same_as_before(srv)


def test_serving_stale_pid_file_is_removed(tmp_path: Path) -> None:
    """A PID file naming a live process that is not this home's frontend (a recycled PID) is stale."""
    (tmp_path / "tmp").mkdir()
    pid_file = tmp_path / "tmp" / ".model_server.pid"
    pid_file.write_text(str(os.getpid()))
    assert server._frontend_pid(tmp_path) is None
    assert not pid_file.exists()
    assert server.stop(tmp_path) is False


def test_serving_allowed_urls_only_match_the_model_store(tmp_path: Path) -> None:
    store = tmp_path / "a_b-c, d.e" / "model-store"
    pattern = re.compile(server.allowed_urls(store), re.IGNORECASE)  # Java's syntax here is Python's too
    assert "," not in pattern.pattern  # TorchServe splits allowed_urls on commas
    assert pattern.fullmatch(f"file://{store}/{NAME}.v1.mar")
    for url in (
        f"file://{store}/sub/{NAME}.v1.mar",
        f"file://{store}-other/{NAME}.v1.mar",
        f"file://{tmp_path}/{NAME}.v1.mar",
        f"file://{store}/{NAME}.v1.mar.gz",
        f"http://example.com{store}/{NAME}.v1.mar",
    ):
        assert not pattern.fullmatch(url), url


def _health(port: int) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code
    except requests.RequestException:
        return 0


@pytest.mark.slow
def test_serving_production_health_without_token_and_store_only(
    tmp_path: Path, ckpts: dict[str, Any]
) -> None:
    """``python -m serving.server`` (the containers' command): health without a token, inference only
    with the key, no archive from outside the model store; SIGTERM stops it."""
    home = tmp_path / "prod"
    mar = package.package(ckpts["encoder"], NAME, 5, home / "model-store", package.Config(max_images=4))
    ports, health = server.Ports.free(), server.Ports.free().inference
    argv = [
        *("--home", str(home), "--config", "production", "--port", str(ports.inference)),
        *("--management-port", str(ports.management), "--metrics-port", str(ports.metrics)),
        *("--grpc-port", str(ports.grpc_inference), "--grpc-management-port", str(ports.grpc_management)),
        *("--health-port", str(health), "--timeout", "90"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(server.KEY_ENV["inference"], None)
    env.pop(server.KEY_ENV["management"], None)
    log = (tmp_path / "runner.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", *argv],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while _health(health) != 200:
            assert proc.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the health endpoint never answered 200"
            time.sleep(0.3)
        srv = server.Server.load(home)
        assert requests.get(f"{srv.inference_url}/ping", timeout=5).status_code in (
            400,
            401,
        )  # TorchServe's own
        management.register(srv, mar)
        wait_ready(srv, NAME)  # with the inference key from key_file.json
        assert _health(health) == 200  # still no token
        url = f"{srv.inference_url}/predictions/{NAME}"
        assert requests.post(url, data=png(0), headers=PNG, timeout=30).status_code in (400, 401)
        assert _answers(srv) == "5"

        cfg = (home / "config.properties").read_text()
        assert "allowed_urls=file://.*" not in cfg
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        shutil.copy(mar, outside / "evil.mar")
        mgmt = {**srv.headers("management")}
        for where in (
            f"file://{outside / 'evil.mar'}",
            str(outside / "evil.mar"),
            "http://127.0.0.1:9/evil.mar",
        ):
            r = requests.post(
                f"{srv.management_url}/models",
                params={"url": where, "synchronous": "true", "initial_workers": 1},
                headers=mgmt,
                timeout=60,
            )
            assert r.status_code >= 400, (where, r.text)
        assert not (home / "model-store" / "evil.mar").exists()
        assert management.versions(srv, NAME) == ["5"]
        key = json.loads((home / "key_file.json").read_text())["inference"]["key"]
        assert key not in (tmp_path / "runner.log").read_text()

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not srv.ping() and _health(health) == 0
        assert not (home / "server.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        server.stop(home)
        log.close()
