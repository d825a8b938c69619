"""TorchServe's management API for deployment: register, warm up, smoke-test, set default, roll back.

Plain functions over HTTP, used by the Prefect flow ``flows/deploy.py`` and the ``tessera serve``
commands. Each model keeps its deployment history in ``<home>/deployments.json`` (the versions made
default, in order), so a rollback knows the previous version even after a restart. After every
register, set-default and unregister, ``<home>/registered.json`` records what TorchServe then holds
(each model's versions, their archives and workers, its default); ``serving.server.start`` calls
``restore`` to register that again after a restart (TorchServe runs with ``--ncs``: no snapshots of
its own), so a stopped, crashed or killed server comes back serving the same versions. Under token
authorisation the management key comes from ``$TESSERA_TS_MANAGEMENT_KEY`` or TorchServe's key file;
it is sent in a header and never logged or printed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import requests

from serving.server import Server, ServingError

log = logging.getLogger(__name__)
REGISTERED = "registered.json"


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
    _register(server, mar, workers, timeout_s)
    save_state(server)


def _register(server: Server, mar: str | Path, workers: int = 1, timeout_s: int = 300) -> None:
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
    _set_default(server, name, version)
    save_state(server)


def _set_default(server: Server, name: str, version: str) -> None:
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
    save_state(server)


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


# -- what is registered, for a restart -----------------------------------------------------------
def registered(server: Server) -> dict[str, dict[str, Any]]:
    """``{model: {"default": version, "versions": {version: {"url": archive, "workers": n}}}}`` as
    last recorded in ``<home>/registered.json`` (empty if nothing was)."""
    path = server.home / REGISTERED
    return json.loads(path.read_text()) if path.is_file() else {}


def save_state(server: Server) -> dict[str, dict[str, Any]]:
    """Record what TorchServe holds now (every model, version, archive, workers, default).

    Written to a temporary file and renamed, so a kill at any moment leaves the previous record or
    the new one, never half of one.
    """
    mgmt = server.headers("management")
    listed = _check(requests.get(f"{server.management_url}/models", headers=mgmt, timeout=30), "listing")
    state: dict[str, dict[str, Any]] = {}
    for m in listed.get("models", []):
        name = m["modelName"]
        described = _check(
            requests.get(f"{server.management_url}/models/{name}/all", headers=mgmt, timeout=30),
            f"describing {name}",
        )
        state[name] = {
            "default": default_version(server, name),
            "versions": {
                str(v["modelVersion"]): {"url": v["modelUrl"], "workers": int(v.get("minWorkers") or 1)}
                for v in described
            },
        }
    path = server.home / REGISTERED
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return state


def restore(server: Server) -> dict[str, Any]:
    """Register again what ``registered.json`` records and make the recorded defaults default.

    For a server that just started: versions it already has (``--models`` at start) are kept, the
    recorded default of each model is registered first (so no other version answers for it), an
    archive no longer in the model store is skipped with a warning. Returns what was registered and
    skipped; a registration that fails raises ``ServingError``. The record is rewritten only at the
    end, so an interrupted restore leaves it whole for the next start.
    """
    record = registered(server)
    done: dict[str, list[str]] = {}
    skipped: list[str] = []
    for name, entry in sorted(record.items()):
        have = set(versions(server, name))
        default = entry.get("default")
        order = sorted(entry.get("versions", {}).items(), key=lambda kv: kv[0] != default)
        for version, info in order:
            if version in have:
                continue
            mar = server.model_store / Path(info["url"]).name
            if not mar.is_file():
                log.warning("not restoring %s v%s: %s is not in the model store", name, version, mar)
                skipped.append(f"{name} v{version}")
                continue
            _register(server, mar.name, workers=int(info.get("workers") or 1))
            done.setdefault(name, []).append(version)
        if default and default in versions(server, name) and default_version(server, name) != default:
            _set_default(server, name, default)
    save_state(server)  # now with what ``--models`` loaded at start, without what was skipped
    return {"registered": done, "skipped": skipped}


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
