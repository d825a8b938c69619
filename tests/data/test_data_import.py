"""Bring your own data: the image guard and `tessera data import` with one file of every bad kind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from components.data import app
from tessera.data.folder import load_split, load_unlabeled
from tessera.data.images import open_image
from tessera.data.importer import import_folder
from tessera.errors import DataError, ImageError


def _png(mode: str, size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    elif mode == "P":
        im = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert("P")
    else:
        im = Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _bomb() -> bytes:
    """A valid PNG header declaring 60,000 x 60,000 pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


BAD = {  # file -> a word its rejection reason must contain
    "cat/truncated.jpg": "truncated",
    "cat/garbage.png": "not an image",
    "cat/notes.txt": "not an image",
    "cat/empty.jpg": "0 bytes",
    "cat/bomb.png": "too large",
    "dog/folder.png": "directory",
    "dog/pipe.png": "not a regular file",
}
GOOD = {
    "cat/rgb.png": "RGB",
    "cat/grey.png": "L",
    "cat/palette.png": "P",
    "cat/alpha.png": "RGBA",
    "cat/deep.png": "I;16",
    "cat/photo.jpg": "jpeg",
    "dog/a.png": "RGB",
    "dog/b.png": "LA",
    "dog/c.jpg": "jpeg",
    "dog/d.png": "RGB",
    "dog/e.png": "RGB",
    "dog/f.png": "RGB",
    "dog/g.png": "RGB",  # 7 dogs, 6 cats: each class in train, val and test at 70/10/20
}


def make_source(root: Path) -> Path:
    src = root / "src"
    for rel, mode in GOOD.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(_jpeg(len(rel)) if mode == "jpeg" else _png(mode, seed=len(rel)))
    (src / "cat/truncated.jpg").write_bytes(_jpeg(1)[: len(_jpeg(1)) * 2 // 3])
    (src / "cat/garbage.png").write_bytes(os.urandom(300))
    (src / "cat/notes.txt").write_text("not a picture")
    (src / "cat/empty.jpg").write_bytes(b"")
    (src / "cat/bomb.png").write_bytes(_bomb())
    (src / "dog/folder.png").mkdir()
    os.mkfifo(src / "dog/pipe.png")
    return src


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Mode, mtime and sha256 (regular files only: a FIFO is never opened) of everything under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else ""
        out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def test_open_image_reasons_and_conversions(tmp_path: Path) -> None:
    for mode in ("RGB", "L", "P", "RGBA", "LA", "I;16"):
        im = open_image(_png(mode))
        assert im.mode == "RGB" and im.size == (40, 30)
    deep = np.asarray(open_image(_png("I;16")))
    assert 100 < deep.mean() < 160  # 16-bit values are scaled, not clipped to white
    with pytest.raises(ImageError, match="truncated"):
        open_image(_jpeg()[:400])  # cut inside the header
    with pytest.raises(ImageError, match="truncated"):
        open_image(_jpeg()[: len(_jpeg()) * 2 // 3])  # cut inside the pixel data
    with pytest.raises(ImageError, match="not an image"):
        open_image(b"hello world")
    with pytest.raises(ImageError, match="0 bytes"):
        open_image(b"")
    with pytest.raises(ImageError, match="too large"):
        open_image(_bomb())
    with pytest.raises(ImageError, match="too large"):
        open_image(_png("RGB", (100, 100)), max_pixels=50 * 50)
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageError, match="directory"):
        open_image(tmp_path / "d.png")
    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(ImageError, match="not a regular file"):
        open_image(tmp_path / "f.png")


def test_import_rejects_every_bad_kind_and_keeps_the_source(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    before = snapshot(src)
    result = import_folder(src, tmp_path / "data" / "mine", size=32, seed=0)
    assert snapshot(src) == before  # the source is never modified
    reasons = {r["file"]: r["reason"] for r in result.rejected}
    assert set(reasons) == set(BAD)
    for rel, word in BAD.items():
        assert word in reasons[rel], (rel, reasons[rel])
    assert result.imported == len(GOOD)
    out = tmp_path / "data" / "mine"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["import"]["origin"].values()) == sorted(GOOD)
    assert manifest["classes"] == ["cat", "dog"]
    report = json.loads((out / "import_report.json").read_text())
    assert {r["file"] for r in report["rejected"]} == set(BAD)
    assert {"L", "P", "RGBA", "LA", "I;16"} <= set(report["converted"])
    images = [load_split(out, s)[0] for s in ("train", "val", "test") if (out / s).is_dir()]
    assert sum(len(x) for x in images) == len(GOOD)
    assert all(x.shape[1:] == (3, 32, 32) for x in images)

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = import_folder(src, out, size=32, seed=0)
    assert again.status == "unchanged" and again.imported == len(GOOD)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes  # a no-op
    assert import_folder(src, out, size=48, seed=0).status == "imported"  # options are in the key


def test_class_without_valid_image_is_an_error_naming_it(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "ok").mkdir(parents=True)
    (src / "ok" / "a.png").write_bytes(_png("RGB"))
    (src / "broken").mkdir()
    (src / "broken" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="broken"):
        import_folder(src, tmp_path / "data" / "bad")
    assert not (tmp_path / "data" / "bad").exists()
    assert (tmp_path / "data" / "bad.import-report.json").is_file()


def test_presplit_kept_and_flat_is_unlabelled(tmp_path: Path) -> None:
    src = tmp_path / "pre"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                p = src / split / cls / f"{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(_png("RGB", seed=i))
    result = import_folder(src, tmp_path / "data" / "pre")
    assert result.counts["train"] == {"a": 3, "b": 3} and result.counts["test"] == {"a": 2, "b": 2}

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(16):  # pretraining needs at least 16 (min_images)
        (flat / f"{i}.jpg").write_bytes(_jpeg(i))
    result = import_folder(flat, tmp_path / "data" / "flat", size=16)
    assert result.counts == {"unlabeled": 16}
    assert load_unlabeled(tmp_path / "data" / "flat").shape == (16, 3, 16, 16)
    assert result.steps["pretrain"].startswith("yes") and result.steps["adapt"] == "no: no labels"


def test_seeded_stratified_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        for i in range(20):
            (src / cls / f"{i}.png").write_bytes(_png("RGB", (8, 8), seed=i))
    r1 = import_folder(src, tmp_path / "d1", split="0.8,0.1,0.1", seed=3)
    r2 = import_folder(src, tmp_path / "d2", split="0.8,0.1,0.1", seed=3)
    assert (
        r1.counts
        == r2.counts
        == {"train": {"a": 16, "b": 16}, "val": {"a": 2, "b": 2}, "test": {"a": 2, "b": 2}}
    )
    m1 = json.loads((tmp_path / "d1" / "manifest.json").read_text())["files"]
    m2 = json.loads((tmp_path / "d2" / "manifest.json").read_text())["files"]
    assert m1 == m2


def test_import_command_prints_the_rejections(tmp_path: Path) -> None:
    src = make_source(tmp_path)
    result = CliRunner().invoke(app, ["import", str(src), "--name", "mine", "--root", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    for rel in BAD:
        assert rel in result.output
    assert f"{len(GOOD)} images, {len(BAD)} rejected" in result.output


def _record_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch os.open, io.open and builtins.open to record the full path of every file opened."""
    import builtins

    seen: list[str] = []
    real_os_open, real_io_open, real_open = os.open, io.open, builtins.open

    def where(path: Any, dir_fd: int | None) -> str:
        if isinstance(path, int):
            return f"<fd {path}>"
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
        return os.path.join(base, os.fsdecode(path))

    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        seen.append(where(path, dir_fd))
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def io_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(where(file, None))
        return real_io_open(file, *args, **kwargs)

    def b_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(where(file, None))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", b_open)
    return seen


def test_symlinks_are_reported_and_their_outside_targets_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "OUT-good.png").write_bytes(_png("RGB", seed=7))  # a valid image: still not imported
    (outside / "OUT-secret.txt").write_text("root:x:0:0\n")
    os.mkfifo(outside / "OUT-pipe.png")  # opening it (blocking) would hang the import
    src = tmp_path / "src"
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        (src / cls / "a.png").write_bytes(_png("RGB", seed=len(cls)))
    links = {  # link -> target; every one is reported, none imported
        "cat/good.png": outside / "OUT-good.png",  # file link out (absolute)
        "cat/rel.png": Path("../../outside/OUT-good.png"),  # file link out (relative)
        "cat/secret.png": outside / "OUT-secret.txt",  # a text file out
        "cat/pipe.png": outside / "OUT-pipe.png",  # a FIFO out
        "cat/more": outside,  # directory link out, inside a class
        "bird": outside,  # directory link out, at the top: not a class folder
        "dog/again.png": Path("a.png"),  # inside the source: refused too (choice: never follow)
        "dog/cats": Path("../cat"),  # directory link inside the source
    }
    for rel, target in links.items():
        (src / rel).symlink_to(target)
    opened = _record_opens(monkeypatch)

    few = {"purpose": "pretrain", "min_images": 1}  # 2 images: too few for any real purpose
    result = import_folder(src, tmp_path / "data" / "mine", **few)  # type: ignore[arg-type]
    reasons = {r["file"]: r["reason"] for r in result.rejected}
    assert set(reasons) == set(links)
    for rel in links:
        inside = rel.startswith("dog/")
        want = "symlink inside the source folder" if inside else "symlink to a path outside the source folder"
        assert want in reasons[rel], (rel, reasons[rel])
    assert result.imported == 2 and result.counts  # cat/a.png, dog/a.png only
    report = json.loads((tmp_path / "data" / "mine" / "import_report.json").read_text())
    assert {r["file"]: r["reason"] for r in report["rejected"]} == reasons
    assert sorted(
        json.loads((tmp_path / "data/mine/manifest.json").read_text())["import"]["origin"].values()
    ) == [
        "cat/a.png",
        "dog/a.png",
    ]

    few_cli = ["--purpose", "pretrain", "--min-images", "1"]
    cli = CliRunner().invoke(
        app, ["import", str(src), "--name", "cli", "--root", str(tmp_path / "data"), *few_cli]
    )
    assert cli.exit_code == 0, cli.output
    assert "2 images, 8 rejected" in cli.output and "outside the source folder" in cli.output
    for rel in links:
        assert rel in cli.output
    escaped = [p for p in opened if Path(os.path.realpath(p)).is_relative_to(outside.resolve())]
    assert escaped == [], escaped

    # the source folder itself may be a link (the user named it): only links beneath it are refused
    (tmp_path / "src-link").symlink_to(src)
    assert import_folder(tmp_path / "src-link", tmp_path / "data" / "via-link", **few).imported == 2  # type: ignore[arg-type]


def test_sparse_2gb_file_is_rejected_by_size_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import resource
    import time

    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.png").write_bytes(_png("RGB"))
    with open(src / "huge.png", "wb") as f:
        f.write(_png("RGB"))  # a valid PNG header ...
        f.truncate(2 * 1024**3)  # ... then 2 GiB of holes
    (src / "text.png").write_bytes(b"hello " * (2 * 1024**2))  # 12 MiB under the cap, not an image
    read: list[int] = []
    real_read = os.read

    def counting_read(fd: int, n: int) -> bytes:
        out = real_read(fd, n)
        read.append(len(out))
        return out

    monkeypatch.setattr(os, "read", counting_read)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    result = import_folder(src, tmp_path / "data" / "s", min_images=1)
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 1024
    reasons = {r["file"]: r["reason"] for r in result.rejected}
    assert "too large" in reasons["huge.png"] and str(64 * 1024**2) in reasons["huge.png"]
    assert "not an image" in reasons["text.png"]
    assert result.imported == 1
    assert sum(read) < 1024**2  # the 2 GiB file unread, the 12 MiB text file sniffed from its head only
    # the cap is a setting: a smaller one rejects ok.png too (and then nothing is left to import)
    with pytest.raises(DataError, match="no valid image"):
        import_folder(src, tmp_path / "data" / "t", max_file_bytes=64)


@pytest.mark.parametrize("name", ["../../x", "ABS", "..", ".", "a/b", "", ".hidden", "x" * 65])
def test_import_command_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "a.png").write_bytes(_png("RGB"))
    root = tmp_path / "deep" / "er" / "root"
    root.mkdir(parents=True)
    name = str(tmp_path / "abs") if name == "ABS" else name
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["import", str(src), "--name", name, "--root", str(root)])
    assert result.exit_code == 2, result.output
    assert "ConfigError" in result.output and "invalid data set name" in result.output
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_import_command_refuses_a_name_whose_folder_links_out_of_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cat").mkdir(parents=True)
    (src / "cat" / "a.png").write_bytes(_png("RGB"))
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "evil").symlink_to(tmp_path / "elsewhere")
    result = CliRunner().invoke(app, ["import", str(src), "--name", "evil", "--root", str(tmp_path / "root")])
    assert result.exit_code == 2 and "outside --root" in result.output, result.output
    assert list((tmp_path / "elsewhere").iterdir()) == []
    ok = CliRunner().invoke(
        app,
        ["import", str(src), "--name", "pets-v1.2_b", "--root", str(tmp_path / "root")]
        + ["--purpose", "pretrain", "--min-images", "1"],
    )
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "root" / "pets-v1.2_b" / "manifest.json").is_file()


def _class_folder(root: Path, sizes: dict[str, int], px: int = 40) -> Path:
    for cls, n in sizes.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            (root / cls / f"{i}.png").write_bytes(_png("RGB", (px, px), seed=hash((cls, i)) % 1000))
    return root


def test_a_class_too_small_for_every_split_is_rejected_naming_it(tmp_path: Path) -> None:
    src = _class_folder(tmp_path / "src", {"cat": 1, "dog": 1, "frog": 12})  # one image per class
    result = CliRunner().invoke(app, ["import", str(src), "--name", "tiny", "--root", str(tmp_path / "d")])
    assert result.exit_code == 2, result.output
    assert "2 class(es) too small to appear in every split" in result.output
    assert "cat (1 image(s), none in val/test)" in result.output and "dog" in result.output
    assert "frog" not in result.output.split("too small", 1)[1].split(".")[0]
    assert not (tmp_path / "d" / "tiny").exists()  # nothing written
    with pytest.raises(DataError, match="a single class"):
        import_folder(_class_folder(tmp_path / "one", {"cat": 20}), tmp_path / "d" / "one")
    with pytest.raises(DataError, match="no class folders"):
        flat = tmp_path / "flat"
        flat.mkdir()
        for i in range(20):
            (flat / f"{i}.png").write_bytes(_png("RGB", seed=i))
        import_folder(flat, tmp_path / "d" / "flat", purpose="classify")


def test_small_images_and_leaks_across_splits_are_warned(tmp_path: Path) -> None:
    src = _class_folder(tmp_path / "src", {"cat": 10, "dog": 10}, px=20)  # smaller than 32 px
    for i in range(10):  # the same bytes in every class folder: some land in different splits
        (src / "dog" / f"copy{i}.png").write_bytes((src / "cat" / f"{i}.png").read_bytes())
    result = CliRunner().invoke(app, ["import", str(src), "--name", "w", "--root", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "smaller than 32 px and were upscaled" in result.output and "by 1.6x" in result.output
    assert "identical across splits (a train/test leak)" in result.output
    assert "adapt     yes: 2 classes" in result.output
    report = json.loads((tmp_path / "d" / "w" / "import_report.json").read_text())
    assert report["validation"]["purpose"] == "classify" and len(report["validation"]["warnings"]) == 2
    again = import_folder(src, tmp_path / "d" / "w")  # unchanged: the stored warnings come back
    assert again.status == "unchanged" and again.warnings == report["validation"]["warnings"]
