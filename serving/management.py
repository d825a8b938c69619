"""TorchServe's management API for deployment: register, warm up, smoke-test, set default, roll back.

Plain functions over HTTP, used by the Prefect flow ``flows/deploy.py`` and the ``tessera serve``
commands. Each model keeps its deployment history in ``<home>/deployments.json`` (the versions made
default, in order), so a rollback knows the previous version even after a restart. Under token
authorisation the management key comes from ``$TESSERA_TS_MANAGEMENT_KEY`` or TorchServe's key file;
it is sent in a header and never logged or printed.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import requests

from serving.server import Server, ServingError


def _check(r: requests.Response, what: str) -> Any:
    if r.status_code >= 300:
        raise ServingError(f"{what} failed: HTTP {r.status_code} {r.text[:500]}")
    try:
        return r.json()
    except ValueError:
        return r.text


def versions(server: Server, name: str) -> list[str]:
    """The versions of ``name`` registered in TorchServe (empty if none)."""
    r = requests.get(
        f"{server.management_url}/models/{name}/all", headers=server.headers("management"), timeout=10
    )
    if r.status_code == 404:
        return []
    return [str(v["modelVersion"]) for v in _check(r, f"listing {name}")]


def default_version(server: Server, name: str) -> str | None:
    """The version of ``name`` that answers ``/predictions/<name>``; None if not registered."""
    r = requests.get(
        f"{server.management_url}/models/{name}", headers=server.headers("management"), timeout=10
    )
    if r.status_code == 404:
        return None
    return str(_check(r, f"describing {name}")[0]["modelVersion"])


def register(server: Server, mar: str | Path, workers: int = 1, timeout_s: int = 300) -> None:
    """Register an archive of the model store (synchronously: returns once its workers are up)."""
    params: dict[str, Any] = {
        "url": Path(mar).name,
        "initial_workers": workers,
        "synchronous": "true",
        "response_timeout": timeout_s,
    }
    r = requests.post(
        f"{server.management_url}/models",
        params=params,
        headers=server.headers("management"),
        timeout=timeout_s + 30,
    )
    _check(r, f"registering {Path(mar).name}")


def set_default(server: Server, name: str, version: str) -> None:
    r = requests.put(
        f"{server.management_url}/models/{name}/{version}/set-default",
        headers=server.headers("management"),
        timeout=30,
    )
    _check(r, f"making {name} v{version} the default")


def unregister(server: Server, name: str, version: str) -> None:
    r = requests.delete(
        f"{server.management_url}/models/{name}/{version}", headers=server.headers("management"), timeout=60
    )
    _check(r, f"unregistering {name} v{version}")


def probe_request(kind: str, size: int = 32, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    """A small valid request for a model kind: a seeded noise PNG, or a one-sample generator call."""
    if kind == "generator":
        return json.dumps({"n": 1, "seed": seed}).encode(), {"Content-Type": "application/json"}
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), {"Content-Type": "image/png"}


def predict(
    server: Server,
    name: str,
    body: bytes,
    headers: dict[str, str] | None = None,
    version: str | None = None,
    timeout: float = 120,
) -> requests.Response:
    """POST one request to ``/predictions/<name>[/<version>]`` with the inference key if needed."""
    url = f"{server.inference_url}/predictions/{name}" + (f"/{version}" if version else "")
    return requests.post(
        url, data=body, headers={**server.headers("inference"), **(headers or {})}, timeout=timeout
    )


def smoke(server: Server, name: str, version: str, kind: str, warmup: int = 2) -> dict[str, Any]:
    """Warm the version up, then one request that must answer 200 stamped with that version."""
    body, headers = probe_request(kind)
    t0 = time.perf_counter()
    for _ in range(warmup):
        predict(server, name, body, headers, version)
    r = predict(server, name, body, headers, version)
    if r.status_code != 200:
        raise ServingError(f"smoke request to {name} v{version} answered {r.status_code}: {r.text[:300]}")
    answer = r.json()
    if str(answer.get("model_version")) != str(version):
        raise ServingError(
            f"smoke request to {name} v{version} was answered by v{answer.get('model_version')}"
        )
    return {
        "status": r.status_code,
        "latency_ms": (time.perf_counter() - t0) * 1000 / (warmup + 1),
        "model_version": answer.get("model_version"),
        "data_version": answer.get("data_version"),
    }


# -- history -----------------------------------------------------------------------------------
def history(server: Server) -> dict[str, list[str]]:
    """``{model: [versions made default, oldest first]}`` of this TorchServe home."""
    path = server.home / "deployments.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def record(server: Server, name: str, version: str) -> None:
    hist = history(server)
    hist.setdefault(name, []).append(str(version))
    (server.home / "deployments.json").write_text(json.dumps(hist, indent=2))


def prune(server: Server, name: str, keep: int = 2) -> list[str]:
    """Unregister versions of ``name`` beyond the ``keep`` latest defaults (the default + its previous)."""
    hist = history(server).get(name, [])
    kept = set(hist[-keep:])
    dropped = [v for v in versions(server, name) if v not in kept]
    for v in dropped:
        unregister(server, name, v)
    return dropped


def previous_version(server: Server, name: str) -> tuple[str, str]:
    """(current default, the version deployed before it) from the history; ServingError if none."""
    hist = history(server).get(name, [])
    current = default_version(server, name)
    earlier = [v for v in hist if v != current]
    if current is None or not earlier:
        raise ServingError(f"{name}: no previous version to roll back to (deployed: {hist})")
    return current, earlier[-1]


def pop(server: Server, name: str, version: str) -> None:
    """Forget ``version`` at the end of ``name``'s history (after a rollback away from it)."""
    hist = history(server)
    seq = hist.get(name, [])
    while seq and seq[-1] == version:
        seq.pop()
    (server.home / "deployments.json").write_text(json.dumps(hist, indent=2))
