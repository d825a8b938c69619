"""Offline batch inference: ``tessera embed`` / ``tessera predict`` on a folder with unreadable files."""

from __future__ import annotations

import csv
import json

import torch
import typer
from serving_helpers import as_tensor, png
from typer.testing import CliRunner

from components.predict import embed_cli, predict_cli
from tessera import checkpoint
from tessera.models.embed import embed
from tessera.models.registry import from_checkpoint


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("embed")(embed_cli)
    app.command("predict")(predict_cli)
    return app


def _folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "one.png").write_bytes(png(1))
    (root / "two.png").write_bytes(png(2))
    (root / "broken.png").write_bytes(png(3)[:40])  # truncated
    (root / "dir.png").mkdir()  # a directory where a file is expected
    return root


def test_serving_offline_embed_skips_unreadable(tmp_path, ckpts) -> None:
    root = _folder(tmp_path)
    out = tmp_path / "emb.json"
    r = CliRunner().invoke(_app(), ["embed", str(root), "--model", str(ckpts["encoder"]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert [row["path"] for row in res["results"]] == ["a/one.png", "two.png"]
    assert sorted(s["path"] for s in res["skipped"]) == ["broken.png", "dir.png"]
    model = from_checkpoint(checkpoint.load(ckpts["encoder"]))
    want = embed(model, as_tensor(png(2))[None])[0]
    got = torch.tensor([res["results"][1][f"e{j}"] for j in range(res["dim"])])
    assert torch.allclose(got, want, atol=1e-5)


def test_serving_offline_predict_ttt_csv(tmp_path, ckpts) -> None:
    root = _folder(tmp_path)
    out = tmp_path / "pred.csv"
    r = CliRunner().invoke(
        _app(),
        [
            "predict",
            str(root),
            "--model",
            str(ckpts["ttt"]),
            "--ttt",
            "--steps",
            "1",
            "--copies",
            "2",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 and {"class", "confidence", "class_before", "confidence_before"} <= set(rows[0])
    skipped = list(csv.DictReader(out.with_suffix(".skipped.csv").open()))
    assert len(skipped) == 2


def test_serving_offline_predict_applies_the_policy_by_default(tmp_path, ckpts) -> None:
    from serving_helpers import ttt_checkpoint

    root = _folder(tmp_path)
    runs = {}
    for label, model, extra in (
        ("policy", ckpts["ttt"], []),  # its policy: TTT-MAE at 2 steps x 4 copies
        ("none", ttt_checkpoint(tmp_path / "none.pt", 2, adapt=False), []),  # its policy: none
        ("override", ttt_checkpoint(tmp_path / "none2.pt", 2, adapt=False), ["--method", "ttt_mae_episodic"]),
        ("normstat", ttt_checkpoint(tmp_path / "none3.pt", 2, adapt=False), ["--method", "normstat"]),
    ):
        out = tmp_path / f"{label}.json"
        r = CliRunner().invoke(
            _app(), ["predict", str(root), "--model", str(model), "--out", str(out), *extra]
        )
        assert r.exit_code == 0, r.output
        runs[label] = json.loads(out.read_text())
    assert (runs["policy"]["method"], runs["policy"]["method_source"]) == ("ttt_mae_episodic", "policy")
    assert runs["policy"]["results"][0]["ttt_loss_last"] != ""
    assert (runs["none"]["method"], runs["none"]["ttt"]) == ("none", False)
    assert "class_before" not in runs["none"]["results"][0]  # frozen: nothing before/after to show
    assert (runs["override"]["method"], runs["override"]["method_source"]) == ("ttt_mae_episodic", "request")
    assert runs["none"]["policy_version"] == runs["override"]["policy_version"] is not None
    assert (runs["normstat"]["method"], runs["normstat"]["method_source"]) == ("normstat", "request")
    assert {r["class_before"] for r in runs["normstat"]["results"]} <= set(runs["normstat"]["classes"])
