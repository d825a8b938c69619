"""The DVC adapter: data versions as DVC computes them, tamper checks, and serialized DVC commands.

The core library never imports DVC; flows, components and serving ask this module.
- :func:`data_version` hashes a directory with DVC's own code (``dvc_data``), so its ``md5`` is the
  one ``dvc add``/``dvc repro`` write to the ``.dvc`` file / ``dvc.lock`` (``<md5>.dir``).
- :func:`check_unchanged` compares a directory with what DVC recorded and raises
  :class:`tessera.errors.DataError` naming every changed, added or deleted file.
- :func:`run_dvc` (and :func:`add`, :func:`push`, :func:`pull`, :func:`status`) run the ``dvc``
  command one at a time: concurrent DVC commands in one repository fail on DVC's lock rather than
  wait, so calls here take a process lock (threads) and a file lock (processes) and retry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from tessera.errors import DataError

_THREAD_LOCK = threading.Lock()
MAX_LISTED = 20  # changed files named in an error message


def repo_root(path: str | Path = ".") -> Path:
    """The DVC repository holding ``path`` (the nearest parent with a ``.dvc`` folder)."""
    p = Path(path).resolve()
    for candidate in [p, *p.parents]:
        if (candidate / ".dvc").is_dir():
            return candidate
    raise DataError(f"{path} is not inside a DVC repository: run `dvc init` at the project root")


def _build(path: Path) -> tuple[Any, Any]:
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import MemoryFileSystem
    from dvc_objects.fs.local import LocalFileSystem

    if not path.exists():
        raise DataError(f"{path} not found: build or pull the data first (tessera data build / dvc pull)")
    odb = HashFileDB(MemoryFileSystem(), "/tessera-odb", hash_name="md5")
    _, meta, obj = build(odb, str(path.resolve()), LocalFileSystem(), "md5", dry_run=True)
    return meta, obj


def data_version(path: str | Path) -> dict[str, Any]:
    """``{"md5", "files", "size"}`` of a file or directory, exactly as DVC records it."""
    path = Path(path)
    meta, obj = _build(path)
    if path.is_dir():
        return {"md5": obj.hash_info.value, "files": int(meta.nfiles or 0), "size": int(meta.size or 0)}
    return {"md5": obj.hash_info.value, "files": 1, "size": int(path.stat().st_size)}


def tree_of(path: str | Path) -> dict[str, str]:
    """{relative path: md5} of every file under a directory (DVC's tree entries)."""
    _, obj = _build(Path(path))
    return {"/".join(key): hi.value for key, _, hi in obj}


def recorded_version(path: str | Path) -> dict[str, Any] | None:
    """What DVC recorded for ``path``: from ``<path>.dvc`` or the ``dvc.lock`` beside the repo root."""
    path = Path(path).resolve()
    root = repo_root(path)
    dvc_file = path.with_name(path.name + ".dvc")
    candidates: list[dict[str, Any]] = []
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", [])
        candidates += [o for o in outs if (dvc_file.parent / o["path"]).resolve() == path]
    lock = root / "dvc.lock"
    if not candidates and lock.is_file():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for stage in stages.values():
            candidates += [o for o in stage.get("outs", []) if (root / o["path"]).resolve() == path]
    if not candidates:
        return None
    out = candidates[0]
    return {"md5": out.get("md5"), "files": out.get("nfiles", 1), "size": out.get("size")}


def version_for(path: str | Path) -> dict[str, Any]:
    """The data version to hand a step: what DVC recorded for ``path`` (``dvc.lock`` / ``.dvc``, no
    re-hash: under ``dvc repro`` DVC has just checked it), else, for a folder DVC does not track, its
    hash as DVC would record it."""
    try:
        recorded = recorded_version(path)
    except DataError:  # not inside a DVC repository
        recorded = None
    return dict(recorded) if recorded and recorded.get("md5") else data_version(path)


def _cached_tree(root: Path, md5: str) -> dict[str, str] | None:
    """The ``.dir`` listing of ``md5`` from the local cache, or None when it is not there."""
    digest = md5.removesuffix(".dir")
    for cache in (root / ".dvc" / "cache" / "files" / "md5", root / ".dvc" / "cache"):
        f = cache / digest[:2] / (digest[2:] + ".dir")
        if f.is_file():
            return {e["relpath"]: e["md5"] for e in json.loads(f.read_text())}
    return None


def check_unchanged(path: str | Path) -> dict[str, Any]:
    """The data version of ``path`` if it equals what DVC recorded; else :class:`DataError` naming files."""
    path = Path(path)
    recorded = recorded_version(path)
    if recorded is None:
        raise DataError(f"{path} is not versioned by DVC: run `dvc repro` (or `dvc add {path}`) first")
    current = data_version(path)
    if current["md5"] == recorded["md5"]:
        return current
    old = _cached_tree(repo_root(path), str(recorded["md5"])) if path.is_dir() else None
    if old is None:
        raise DataError(
            f"{path} changed after it was versioned (DVC md5 {recorded['md5']}, now "
            f"{current['md5']}); the recorded listing is not in the cache, so the files "
            "cannot be named: run `dvc pull` or `dvc checkout` to restore it"
        )
    new = tree_of(path)
    changed = sorted(k for k in old.keys() & new.keys() if old[k] != new[k])
    added, deleted = sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys())
    parts = []
    for label, names in (("modified", changed), ("added", added), ("deleted", deleted)):
        if names:
            shown = ", ".join(names[:MAX_LISTED]) + (
                f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
            )
            parts.append(f"{label}: {shown}")
    raise DataError(
        f"{path} changed after it was versioned ({'; '.join(parts)}): restore it with "
        f"`dvc checkout {path}`, or version the new data with `dvc repro` / `dvc add`"
    )


@contextlib.contextmanager
def dvc_lock(root: Path) -> Iterator[None]:
    """Hold the thread lock and an exclusive file lock on ``<root>/.dvc/tmp/tessera.lock``."""
    lock_path = root / ".dvc" / "tmp" / "tessera.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _env_with_this_python() -> dict[str, str]:
    """This environment with this interpreter's bin folder first on PATH, so that the ``python``
    in ``dvc.yaml`` commands is the project's environment, not whatever the shell would find."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_dvc(
    args: Sequence[str], cwd: str | Path = ".", retries: int = 5, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``cwd``'s repository, one at a time; retry when DVC's own lock is busy."""
    root = repo_root(cwd)
    cmd = [sys.executable, "-m", "dvc", *args]
    for attempt in range(retries + 1):
        with dvc_lock(root):
            proc = subprocess.run(
                cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=_env_with_this_python()
            )
        busy = "Unable to acquire lock" in proc.stderr or "is busy" in proc.stderr
        if proc.returncode == 0 or not busy or attempt == retries:
            break
        time.sleep(0.5 * (attempt + 1))  # another DVC (outside Tessera) holds the repo lock
    if proc.returncode != 0:
        raise DataError(
            f"`dvc {' '.join(args)}` failed in {root} (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc


def _targets(paths: Sequence[str | Path], root: Path) -> list[str]:
    return [str(Path(p).resolve().relative_to(root)) for p in paths]


def add(path: str | Path) -> dict[str, Any]:
    """``dvc add PATH`` (writes ``PATH.dvc``, caches the data); returns the data version."""
    root = repo_root(path)
    run_dvc(["add", *_targets([path], root)], cwd=root)
    return data_version(path)


def push(paths: Sequence[str | Path] = (), remote: str | None = None, cwd: str | Path = ".") -> None:
    """``dvc push`` the given paths (all tracked data when empty) to ``remote`` (default remote)."""
    root = repo_root(paths[0] if paths else cwd)
    run_dvc(["push", *(["-r", remote] if remote else []), *_targets(paths, root)], cwd=root)


def pull(paths: Sequence[str | Path] = (), remote: str | None = None, cwd: str | Path = ".") -> None:
    """``dvc pull`` the given paths (all tracked data when empty) from ``remote``."""
    root = repo_root(paths[0] if paths else cwd)
    run_dvc(["pull", *(["-r", remote] if remote else []), *_targets(paths, root)], cwd=root)


def status(paths: Sequence[str | Path] = (), cwd: str | Path = ".") -> dict[str, Any]:
    """``dvc status --json``: {} when the workspace matches what is recorded."""
    root = repo_root(paths[0] if paths else cwd)
    proc = run_dvc(["status", "--json", *_targets(paths, root)], cwd=root)
    text = proc.stdout.strip()
    result: dict[str, Any] = json.loads(text) if text else {}
    return result
