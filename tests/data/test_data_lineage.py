"""The DVC adapter against real DVC: the data version equals DVC's md5, a push/pull round trip
restores the same hash, changed data is refused naming the files, DVC calls are serialized."""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from lifecycle import lineage
from tessera.data.images import save_png
from tessera.errors import DataError


def _dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    with open(repo / ".dvc" / "config", "a") as f:  # what `dvc remote add -d local PATH` writes
        f.write(f"[core]\n    remote = local\n['remote \"local\"']\n    url = {tmp_path / 'remote'}\n")
    rng = np.random.default_rng(0)
    for split, cls, i in [(s, c, i) for s in ("train", "test") for c in ("a", "b") for i in range(3)]:
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        save_png(pixels, repo / "data/set" / split / cls / f"{i}.png")
    (repo / "data/set/manifest.json").write_text("{}\n")
    return repo


def test_round_trip_and_tamper_detection(repo: Path) -> None:
    data = repo / "data" / "set"
    with pytest.raises(DataError, match="not versioned"):
        lineage.check_unchanged(data)
    version = lineage.add(data)
    recorded = yaml.safe_load((repo / "data" / "set.dvc").read_text())["outs"][0]
    assert version == {"md5": recorded["md5"], "files": recorded["nfiles"], "size": recorded["size"]}
    assert version["files"] == 13 and lineage.check_unchanged(data) == version
    with ThreadPoolExecutor(max_workers=3) as pool:  # concurrent DVC calls would fail on DVC's lock
        assert list(pool.map(lambda _: lineage.status([data]), range(3))) == [{}, {}, {}]

    lineage.push([data])
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    lineage.pull([data])
    assert lineage.data_version(data) == version
    assert lineage.check_unchanged(data) == version

    (data / "train/a/0.png").write_bytes(b"tampered")
    (data / "test/b/1.png").unlink()
    (data / "train/b/new.png").write_bytes(b"x")
    with pytest.raises(DataError) as err:
        lineage.check_unchanged(data)
    msg = str(err.value)
    for part in ("modified: train/a/0.png", "deleted: test/b/1.png", "added: train/b/new.png"):
        assert part in msg

    shutil.rmtree(repo / ".dvc" / "cache")  # without the recorded listing: still refused, says what to do
    with pytest.raises(DataError, match="dvc pull"):
        lineage.check_unchanged(data)


def test_dvc_lock_outputs_are_found(repo: Path) -> None:
    """A dvc.yaml stage's output is checked against dvc.lock, like a `.dvc` file's."""
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "copy": {"cmd": "cp -r data/set data/copy", "deps": ["data/set"], "outs": ["data/copy"]}
                }
            }
        )
    )
    lineage.run_dvc(["repro", "-q"], cwd=repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    out = lock["stages"]["copy"]["outs"][0]
    assert lineage.check_unchanged(repo / "data" / "copy")["md5"] == out["md5"]
