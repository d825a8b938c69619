"""The embedded data set: real images from installed wheels, a fixed split, identical bytes and the
same DVC hash on every build; the `data build` / `data corrupt` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from components import data as data_step
from lifecycle.lineage import data_version
from tessera.corruptions.suite import corrupt_dataset
from tessera.data.embedded import PHOTO_SOURCES, build_embedded, package_file
from tessera.data.folder import load_split, load_unlabeled
from tessera.data.manifest import verify_manifest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("build")
    a = root / "a" / "digits"
    b = root / "b" / "digits"
    build_embedded(a, unlabeled_patches=45)
    build_embedded(b, unlabeled_patches=45)
    return a, b


def test_two_builds_give_identical_bytes_and_dvc_hash(built: tuple[Path, Path]) -> None:
    a, b = built
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)
    va, vb = data_version(a), data_version(b)
    assert va == vb and va["md5"].endswith(".dir") and va["files"] == 1797 + 45 + 1


def test_manifest_counts_hashes_and_provenance(built: tuple[Path, Path]) -> None:
    root = built[0]
    manifest = json.loads((root / "manifest.json").read_text())
    assert verify_manifest(root) == []
    counts = manifest["counts"]
    assert sum(sum(counts[s].values()) for s in ("train", "val", "test")) == 1797
    assert counts["unlabeled"] == 45
    assert manifest["classes"] == [str(d) for d in range(10)]
    for split in ("train", "val", "test"):  # stratified: every class in every split, near 70/10/20
        assert set(counts[split]) == set(manifest["classes"])
    assert 350 <= sum(counts["test"].values()) <= 370
    files = {p["file"] for p in manifest["provenance"]}
    assert "sklearn/datasets/data/digits.csv.gz" in files
    assert {"sklearn/datasets/images/china.jpg", "skimage/data/astronaut.png"} <= files
    for p in manifest["provenance"]:
        package, rel = p["file"].split("/", 1)
        assert package_file(package, rel).is_file() and p["version"]
    x, y, classes = load_split(root, "train")
    assert x.shape[1:] == (3, 32, 32) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert len(classes) == 10 and int(y.max()) == 9
    pool = load_unlabeled(root)
    assert pool.shape == (45, 3, 32, 32) and float(pool.std()) > 0.05  # real photo content


def test_photo_sources_ship_inside_the_wheels() -> None:
    for _, package, rel in PHOTO_SOURCES:
        assert package_file(package, rel).stat().st_size > 1000


def test_corrupted_set_is_the_same_for_any_worker_count(built: tuple[Path, Path], tmp_path: Path) -> None:
    names = ["gaussian_noise", "fog", "pixelate"]
    m1 = corrupt_dataset(built[0], tmp_path / "w1", names, (1, 5), seed=0, max_per_class=1, workers=1)
    m2 = corrupt_dataset(built[0], tmp_path / "w2", names, (1, 5), seed=0, max_per_class=1, workers=2)
    assert m1["files"] == m2["files"] and m1["total"] == 3 * 2 * 10
    sheet = "contact_sheet.png"
    assert (tmp_path / "w1" / sheet).read_bytes() == (tmp_path / "w2" / sheet).read_bytes()
    assert data_version(tmp_path / "w1") == data_version(tmp_path / "w2")
    some = sorted((tmp_path / "w1" / "fog" / "5").rglob("*.png"))
    assert len(some) == 10 and {p.parent.name for p in some} == {str(d) for d in range(10)}


def test_build_and_corrupt_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    params = {
        "data": {"name": "tiny", "unlabeled_patches": 10},
        "corrupt": {
            "corruptions": ["contrast", "jpeg_compression"],
            "severities": [1, 3],
            "max_per_class": 1,
            "workers": 1,
        },
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert data_step.main(["build", "--params", "params.yaml"]) == 0
    first = Path("runs/data/metrics.json").read_bytes()
    metrics = json.loads(first)
    assert metrics["images/unlabeled"] == 10 and metrics["images/train"] > 1000
    # dvc.lock records this file's md5: the same data must give the same bytes (no wall-clock time)
    assert "seconds" not in metrics
    assert data_step.main(["build", "--params", "params.yaml"]) == 0
    assert Path("runs/data/metrics.json").read_bytes() == first
    assert data_step.main(["corrupt", "--extras", "--severities", "2"]) == 0
    assert "seconds" not in json.loads(Path("runs/corrupt/metrics.json").read_text())
    out = Path("data/tiny-c")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["corruptions"] == [
        "contrast",
        "jpeg_compression",
        "speckle_noise",
        "gaussian_blur",
        "spatter",
        "saturate",
    ]
    assert manifest["severities"] == [2] and manifest["parameterisation"] == "cifar10-c"
    sheet = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(out / "contact_sheet.png"))
    assert sheet.shape[0] > 6 * 64 and sheet.shape[2] == 3
    assert len(list(out.rglob("*.png"))) == 6 * 10 + 1
    assert data_step.main(["corrupt", "--corruptions", "rain"]) == 2  # a named error, not a traceback


@pytest.mark.parametrize("name", ["../outside", "/abs", ".."])
def test_build_refuses_a_data_name_outside_the_root(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump({"data": {"name": name, "root": "data"}}))
    assert data_step.main(["build", "--params", "params.yaml"]) == 2
    assert "invalid data set name" in capsys.readouterr().err
    assert not (tmp_path / "data").exists() and not (tmp_path / "outside").exists()  # no data written
