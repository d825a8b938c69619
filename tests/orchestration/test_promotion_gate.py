"""The promotion gate decides only on numbers it can trust (real MLflow on SQLite / PostgreSQL).

A NaN, infinite or out-of-[0, 1] gate metric of the challenger is a rejection naming the metric; a
champion whose metric is untrusted is not compared against (the challenger meets the minimums
instead, and the reason says so); ``--force --reason`` still overrides, recorded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lifecycle import promotion, registry, tracking

CLEAN, CORR = "clean/accuracy", "corrupted/policy/mean_accuracy"
NAN, INF = float("nan"), float("inf")


def _release(ckpt: Path, metrics: dict[str, float], data_md5: str = "d0.dir") -> str:
    """A parent run with exactly ``metrics`` logged and the bundles registered as challenger."""
    from tessera import checkpoint

    stamped = ckpt.with_name(f"{ckpt.stem}-{data_md5}.pt")
    if not stamped.is_file():
        checkpoint.save({**checkpoint.load(ckpt), "data_version": {"md5": data_md5}}, stamped)
    client = tracking.client()
    run_id = tracking.start_run(client, tracking.experiment_id(client), "retrain")
    tracking.MlflowTracker(client, run_id).log_metrics(metrics, 0)
    registry.register_release(
        client, run_id, {"encoder": stamped, "classifier": stamped}, {"data_version": data_md5}
    )
    client.set_terminated(run_id)
    return run_id


def _strict_numbers(client, version: str) -> dict[str, float]:
    """The recorded ``promotion.numbers``, parsed as strict JSON (no NaN / Infinity tokens)."""

    def refuse(token: str) -> float:
        raise AssertionError(f"non-finite number {token} recorded")

    tags = client.get_model_version("tessera-ttt-classifier", version).tags
    return json.loads(tags["promotion.numbers"], parse_constant=refuse)


@pytest.mark.parametrize(
    ("clean", "corrupted", "metric", "says"),
    [
        (NAN, 0.6, CLEAN, "is NaN"),
        (0.85, INF, CORR, "is inf"),
        (1.5, 0.6, CLEAN, "is 1.5, outside [0, 1]"),
        (0.85, -0.1, CORR, "is -0.1, outside [0, 1]"),
    ],
    ids=["clean-nan", "corrupted-inf", "clean-1.5", "corrupted-minus-0.1"],
)
def test_untrusted_challenger_metric_is_rejected_naming_it(
    backend: str, mae_ckpt: Path, clean: float, corrupted: float, metric: str, says: str
) -> None:
    client = tracking.client()
    first = _release(mae_ckpt, {CLEAN: 0.80, CORR: 0.50})
    assert promotion.promote(first).promoted
    bad = _release(mae_ckpt, {CLEAN: clean, CORR: corrupted})  # otherwise better than the champion
    decision = promotion.promote(bad)
    assert not decision.promoted, decision.reason
    assert f"{metric!r} {says}" in decision.reason and "untrusted challenger" in decision.reason
    for kind in ("encoder", "classifier"):  # no alias moved, for any bundle
        assert registry.version_by_alias(client, kind, "champion").tags["release"] == first
        assert registry.version_by_alias(client, kind, "challenger").tags["release"] == bad
    tags = client.get_model_version("tessera-ttt-classifier", "2").tags
    assert tags["promotion.decision"] == "rejected" and metric in tags["promotion.reason"]
    assert all(math.isfinite(v) for v in _strict_numbers(client, "2").values())


def test_untrusted_first_champion_is_rejected_naming_both_metrics(sqlite_ws: Path, mae_ckpt: Path) -> None:
    bad = _release(mae_ckpt, {CLEAN: NAN, CORR: INF})
    decision = promotion.promote(bad)
    assert not decision.promoted and f"{CLEAN!r} is NaN" in decision.reason, decision.reason
    assert f"{CORR!r} is inf" in decision.reason
    assert registry.release_of(tracking.client()) is None  # no champion was made


def test_missing_challenger_metric_is_rejected(sqlite_ws: Path, mae_ckpt: Path) -> None:
    first = _release(mae_ckpt, {CLEAN: 0.8, CORR: 0.5})
    assert promotion.promote(first).promoted
    partial = _release(mae_ckpt, {CLEAN: 0.9})
    decision = promotion.promote(partial)
    assert not decision.promoted and f"lacks metric {CORR!r}" in decision.reason
    assert registry.release_of(tracking.client()) == first


def test_force_overrides_untrusted_metrics_and_a_nan_champion_falls_back_to_the_minimums(
    backend: str, mae_ckpt: Path
) -> None:
    client = tracking.client()
    broken = _release(mae_ckpt, {CLEAN: NAN, CORR: 0.5})
    assert not promotion.promote(broken).promoted
    forced = promotion.promote(broken, force=True, reason="incident 7 hotfix")
    assert forced.promoted and forced.forced and registry.release_of(client) == broken
    assert forced.reason.startswith("forced: incident 7 hotfix (gate said: untrusted challenger")
    assert client.get_model_version("tessera-ttt-classifier", "1").tags["promotion.forced"] == "True"
    # The champion's clean accuracy is NaN: it is not compared against, the minimums apply.
    weak = _release(mae_ckpt, {CLEAN: 0.25, CORR: 0.5})  # below min_clean_accuracy 0.3
    decision = promotion.promote(weak)
    assert not decision.promoted and "below the minimums" in decision.reason, decision.reason
    fine = _release(mae_ckpt, {CLEAN: 0.8, CORR: 0.5})
    decision = promotion.promote(fine)
    assert decision.promoted and registry.release_of(client) == fine, decision.reason
    assert f"champion metrics not comparable ({CLEAN!r} is NaN)" in decision.reason
    assert "judged on the minimums" in decision.reason and "drop nan" not in decision.reason
    assert set(_strict_numbers(client, "3")) == {"challenger/clean", "challenger/corrupted"}


def test_champion_reevaluated_to_nan_is_not_compared(sqlite_ws: Path, mae_ckpt: Path) -> None:
    first = _release(mae_ckpt, {CLEAN: 0.9, CORR: 0.9}, data_md5="old.dir")
    assert promotion.promote(first).promoted
    challenger = _release(mae_ckpt, {CLEAN: 0.6, CORR: 0.4}, data_md5="new.dir")
    decision = promotion.promote(
        challenger, data_md5="new.dir", reevaluate=lambda ckpt: {CLEAN: 0.5, CORR: NAN}
    )
    assert decision.promoted, decision.reason
    assert f"{CORR!r} is NaN" in decision.reason and "re-evaluated" in decision.reason


def test_honest_better_challenger_still_promotes(backend: str, mae_ckpt: Path) -> None:
    client = tracking.client()
    first = _release(mae_ckpt, {CLEAN: 0.80, CORR: 0.50})
    assert promotion.promote(first).promoted
    better = _release(mae_ckpt, {CLEAN: 0.795, CORR: 0.55})  # clean -0.5 point, corrupted +5
    decision = promotion.promote(better)
    assert decision.promoted and decision.reason.startswith("clean drop 0.0050 <= 0.01"), decision.reason
    assert "not comparable" not in decision.reason
    assert registry.release_of(client) == better
    numbers = _strict_numbers(client, "2")
    assert numbers["clean_drop"] == pytest.approx(0.005) and numbers["corrupted_gain"] == pytest.approx(0.05)


def test_decide_never_promotes_on_nan() -> None:
    """The pure gate: NaN (or inf) anywhere, challenger or threshold, never promotes."""
    good, champ = {CLEAN: 0.8, CORR: 0.6}, {CLEAN: 0.8, CORR: 0.5}
    for value in (NAN, INF, -INF, 1.0000001, -1e-9):
        for key in (CLEAN, CORR):
            for champion in (None, champ, {CLEAN: NAN, CORR: NAN}):
                ok, why, numbers = promotion.decide(promotion.Config(), {**good, key: value}, champion)
                assert not ok and repr(key) in why, why
                assert all(math.isfinite(v) for v in numbers.values())
    for name in ("max_clean_drop", "min_corrupted_gain", "min_clean_accuracy", "min_corrupted_accuracy"):
        cfg = promotion.Config(**{name: NAN})
        ok, why, _ = promotion.decide(cfg, good, champ)
        assert not ok and name in why
    assert promotion.decide(promotion.Config(), good, {CLEAN: 0.8, CORR: INF})[0]  # minimums instead
    assert promotion.decide(promotion.Config(), {CLEAN: 0.0, CORR: 1.0}, None) == (
        False,
        "below the minimums; first champion: clean 0.0000 (min 0.3), corrupted 1.0000 (min 0.2)",
        {"challenger/clean": 0.0, "challenger/corrupted": 1.0},
    )


def test_a_champion_from_before_policies_is_compared_on_its_frozen_accuracy(
    sqlite_ws: Path, mae_ckpt: Path
) -> None:
    cfg = promotion.Config()
    assert cfg.corrupted_metric == CORR == promotion.POLICY_METRIC
    old = _release(mae_ckpt, {CLEAN: 0.80, "corrupted/frozen/mean_accuracy": 0.50, "corrupted/x": 0.9})
    assert promotion.promote(
        old, promotion.Config(corrupted_metric="corrupted/frozen/mean_accuracy")
    ).promoted
    worse = _release(mae_ckpt, {CLEAN: 0.80, CORR: 0.45})  # below the old champion's frozen 0.50
    decision = promotion.promote(worse, cfg)
    assert not decision.promoted and "no policy: its frozen accuracy" in decision.reason
    assert decision.numbers["champion/corrupted"] == 0.50
    better = _release(mae_ckpt, {CLEAN: 0.80, CORR: 0.55})
    assert promotion.promote(better, cfg).promoted
