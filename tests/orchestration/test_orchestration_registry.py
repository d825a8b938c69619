"""MLflow tracking and the gated registry, on real MLflow (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lifecycle import promotion, registry, release, tracking

ROOT = Path(__file__).resolve().parents[2]
GATE_KEYS = ("clean/accuracy", "corrupted/policy/mean_accuracy")


def _stamped(ckpt: Path, data_md5: str) -> Path:
    """A copy of ``ckpt`` trained, as it says, on data ``data_md5`` (the registry copies the stamp)."""
    from tessera import checkpoint

    path = ckpt.with_name(f"{ckpt.stem}-{data_md5}.pt")
    if not path.is_file():
        checkpoint.save({**checkpoint.load(ckpt), "data_version": {"md5": data_md5}}, path)
    return path


def _release(ckpt: Path, clean: float, corrupted: float, data_md5: str = "d0.dir") -> str:
    """A parent run with evaluation metrics and the bundles registered as challenger."""
    ckpt = _stamped(ckpt, data_md5)
    client = tracking.client()
    run_id = tracking.start_run(client, tracking.experiment_id(client), "retrain")
    metrics = dict(zip(GATE_KEYS, (clean, corrupted), strict=True))
    tracking.MlflowTracker(client, run_id).log_metrics(metrics, 0)
    registry.register_release(
        client, run_id, {"encoder": ckpt, "classifier": ckpt}, {"data_version": data_md5, "params_hash": "p"}
    )
    client.set_terminated(run_id)
    return run_id


def test_tracker_logs_params_metrics_artifacts_dataset_and_system_metrics(
    sqlite_ws: Path, tmp_path: Path
) -> None:
    cfg = tracking.Config(system_metrics_interval_s=0.2)
    client = tracking.client(cfg)
    exp = tracking.experiment_id(client, cfg)
    parent = tracking.start_run(client, exp, "retrain")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grid.png").write_bytes(b"\x89PNG fake")
    with tracking.step_run(client, exp, "pretrain", parent, cfg) as tracker:
        tracker.log_params({"pretrain": {"epochs": 2, "lr": 0.001}})
        for epoch in range(3):
            tracker.log_metrics({"loss": 1.0 / (epoch + 1)}, step=epoch)
        tracker.log_dataset({"md5": "abc.dir", "files": 3, "size": 99}, tmp_path, "tiny")
        tracker.log_outputs(tmp_path / "out")
        child = tracker.run_id
    run = client.get_run(child)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["pretrain.epochs"] == "2"
    assert [m.value for m in client.get_metric_history(child, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert run.inputs.dataset_inputs[0].dataset.digest == "abc.dir"
    assert any(k.startswith("system/cpu") for k in run.data.metrics), run.data.metrics.keys()
    assert [a.path for a in client.list_artifacts(child)] == ["grid.png"]
    assert tracking.tracking_uri().startswith("sqlite:///") and str(sqlite_ws) in tracking.tracking_uri()


def test_bundle_loads_back_with_its_methods(sqlite_ws: Path, mae_ckpt: Path) -> None:
    from tessera import checkpoint
    from tessera.models import embed, from_checkpoint

    _release(mae_ckpt, 0.5, 0.4)
    client = tracking.client()
    bundle = registry.load_bundle(client, "encoder", "challenger")
    model = bundle.unwrap_python_model().model
    assert hasattr(model, "forward_encoder") and hasattr(model, "unpatchify")
    x = torch.rand(3, 3, 32, 32)
    expected = embed(from_checkpoint(checkpoint.load(mae_ckpt)), x).numpy()
    np.testing.assert_allclose(bundle.predict(x.numpy()), expected, rtol=1e-5, atol=1e-6)
    ref = release.resolve("models:/tessera-encoder@challenger")
    assert ref.version == "1"
    assert client.get_model_version("tessera-encoder", "1").tags["data_version"] == "d0.dir"
    assert checkpoint.load(ref.path)["arch"] == "mae_vit_micro_patch4"


def test_better_challenger_promoted_worse_not(backend: str, mae_ckpt: Path) -> None:
    client = tracking.client()
    cfg = promotion.Config(max_clean_drop=0.01, min_corrupted_gain=0.0)
    first = _release(mae_ckpt, 0.80, 0.50)
    assert promotion.promote(first, cfg).promoted
    worse = _release(mae_ckpt, 0.70, 0.60)  # clean falls 10 points
    decision = promotion.promote(worse, cfg)
    assert not decision.promoted and "clean accuracy falls" in decision.reason
    assert registry.release_of(client) == first  # the champion alias did not move
    assert str(registry.version_by_alias(client, "encoder", "champion").version) == "1"
    tags = client.get_model_version("tessera-ttt-classifier", "2").tags
    assert tags["promotion.decision"] == "rejected" and "clean_drop" in json.loads(tags["promotion.numbers"])
    dry = _release(mae_ckpt, 0.81, 0.55)
    assert promotion.promote(dry, cfg, dry_run=True).promoted
    assert registry.release_of(client) == first  # a dry run changes nothing
    better = dry
    assert promotion.promote(better, cfg).promoted
    for kind in ("encoder", "classifier"):  # the whole release moved together
        assert registry.version_by_alias(client, kind, "champion").tags["release"] == better


def test_force_needs_a_reason_and_rollback_moves_the_release_back(sqlite_ws: Path, mae_ckpt: Path) -> None:
    client = tracking.client()
    first = _release(mae_ckpt, 0.8, 0.5)
    assert promotion.promote(first).promoted
    worse = _release(mae_ckpt, 0.1, 0.1)
    with pytest.raises(promotion.PromotionError, match="--reason"):
        promotion.promote(worse, force=True)
    forced = promotion.promote(worse, force=True, reason="hotfix for incident 42")
    assert forced.promoted and registry.release_of(client) == worse
    assert "incident 42" in client.get_model_version("tessera-ttt-classifier", "2").tags["promotion.reason"]
    assert promotion.rollback(reason="bad hotfix") == {"encoder": "1", "classifier": "1"}
    assert registry.release_of(client) == first
    assert str(registry.version_by_alias(client, "encoder", "champion").version) == "1"


def test_champion_is_reevaluated_when_the_data_version_changed(sqlite_ws: Path, mae_ckpt: Path) -> None:
    client = tracking.client()
    first = _release(mae_ckpt, 0.9, 0.9, data_md5="old.dir")
    assert promotion.promote(first).promoted
    seen: list[Path] = []

    def reevaluate(ckpt: Path) -> dict[str, float]:
        seen.append(ckpt)
        assert ckpt.is_file()
        return {"clean/accuracy": 0.5, "corrupted/policy/mean_accuracy": 0.3}

    challenger = _release(mae_ckpt, 0.6, 0.4, data_md5="new.dir")  # worse than 0.9 but better on new data
    decision = promotion.promote(challenger, data_md5="new.dir", reevaluate=reevaluate)
    assert len(seen) == 1 and decision.promoted, decision.reason
    assert "re-evaluated" in decision.reason
    assert "reevaluated.new.dir" in client.get_model_version("tessera-ttt-classifier", "1").tags


def test_two_concurrent_promotions_leave_exactly_one_winner(backend: str, mae_ckpt: Path) -> None:
    cfg = promotion.Config(min_corrupted_gain=0.01)
    a, b = _release(mae_ckpt, 0.8, 0.6), _release(mae_ckpt, 0.8, 0.6)  # equal: only the first may win
    barrier = threading.Barrier(2)
    decisions: dict[str, promotion.Decision] = {}

    def go(release: str) -> None:  # each thread: its own client, connection and lock handle
        barrier.wait()
        decisions[release] = promotion.promote(release, cfg)

    threads = [threading.Thread(target=go, args=(r,)) for r in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [r for r, d in decisions.items() if d.promoted]
    assert len(decisions) == 2 and len(winners) == 1, decisions
    client = tracking.client()
    assert registry.release_of(client) == winners[0]
    tags = {
        client.get_model_version("tessera-ttt-classifier", v).tags["promotion.decision"] for v in ("1", "2")
    }
    assert tags == {"promoted", "rejected"}


def test_the_promotion_lock_holds_across_processes(sqlite_ws: Path) -> None:
    code = (
        "import sys, time; from lifecycle import promotion\n"
        "with promotion.promotion_lock():\n    print('locked', flush=True); time.sleep(3)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with (
        pytest.raises(promotion.PromotionError, match="another promotion"),
        promotion.promotion_lock(timeout_s=0.5),
    ):
        pass
    holder.wait(timeout=30)
    with promotion.promotion_lock(timeout_s=5):  # free again once the other process let go
        pass


def test_registry_list_shows_the_champion_alias(sqlite_ws: Path, mae_ckpt: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    first = _release(mae_ckpt, 0.80, 0.50)
    assert promotion.promote(first, promotion.Config()).promoted
    _release(mae_ckpt, 0.70, 0.40)  # a challenger, not promoted
    rows = {(r["model"], r["version"]): r["aliases"] for r in registry.describe(tracking.client())}
    assert rows[("tessera-ttt-classifier", 1)] == ["champion"]
    assert rows[("tessera-ttt-classifier", 2)] == ["challenger"]
    out = CliRunner().invoke(app, ["registry", "list"])
    assert out.exit_code == 0, out.output
    line = next(x for x in out.output.splitlines() if x.startswith("tessera-ttt-classifier") and " 1 " in x)
    assert "champion" in line, out.output
