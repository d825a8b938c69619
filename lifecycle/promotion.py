"""The promotion gate: a challenger release becomes champion only if it is not worse.

The gate reads the evaluation's documented keys (``docs/CONTRACTS.md``): clean accuracy may not fall
by more than ``max_clean_drop`` and the mean corrupted accuracy with TTT-MAE must rise by at least
``min_corrupted_gain``; with no champion yet, the challenger must meet the configured minimums. When
the champion was trained on another data version than the current one, it is re-evaluated on the
current test data first (a callback running the evaluate component), so both sides are measured on
the same images. Decisions and their numbers are written as tags on the challenger's versions.
The gate decides only on numbers it can trust (``decide``): a NaN, infinite or out-of-[0, 1] gate
metric of the challenger rejects it; such a champion metric is not compared against (minimums instead).

Promotions are serialized by a lock that holds across processes: a PostgreSQL advisory lock when
MLflow's store is PostgreSQL (it then also holds across machines), otherwise an ``flock`` on a file
beside the SQLite database / in the workspace. Two promotions at once cannot both win: the second
one decides against the champion the first one left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lifecycle import registry, tracking
from tessera.errors import TesseraError

Reevaluate = Callable[[Path], dict[str, float]]  # classifier checkpoint -> evaluate's metrics


POLICY_METRIC = "corrupted/policy/mean_accuracy"
FROZEN_FALLBACK = "corrupted/frozen/mean_accuracy"


@dataclasses.dataclass(frozen=True)
class Config:
    """The ``promote`` section of ``params.yaml`` (accuracies are fractions: 0.01 = 1 point)."""

    clean_metric: str = "clean/accuracy"  # evaluate's key for clean test accuracy
    # mean corrupted accuracy with the release's adaptation policy applied (what serving answers);
    # a champion from before policies is compared on its frozen accuracy (FROZEN_FALLBACK)
    corrupted_metric: str = "corrupted/policy/mean_accuracy"
    max_clean_drop: float = 0.01  # the challenger's clean accuracy may be at most this much lower
    min_corrupted_gain: float = 0.0  # its corrupted accuracy must be at least this much higher
    min_clean_accuracy: float = 0.3  # the first champion needs at least this clean accuracy ...
    min_corrupted_accuracy: float = 0.2  # ... and this corrupted accuracy
    reevaluate_on_data_change: bool = True  # re-measure the champion when the data version changed
    lock_timeout_s: float = 600.0  # wait at most this long for another promotion to finish
    # an evaluation registered from outside the flow: clean test images re-scored here (0: all) ...
    verify_images: int = 500
    verify_tolerance: float = 0.02  # ... and how far (plus 4 standard errors) its claim may be off


@dataclasses.dataclass
class Decision:
    """What the gate decided and why; recorded as version tags and a Prefect artifact."""

    release: str
    promoted: bool
    reason: str
    champion_release: str | None = None
    numbers: dict[str, float] = dataclasses.field(default_factory=dict)
    forced: bool = False
    dry_run: bool = False
    versions: dict[str, str] = dataclasses.field(default_factory=dict)

    def markdown(self) -> str:
        verdict = "PROMOTED" if self.promoted else "NOT promoted"
        lines = [
            f"# Promotion: {verdict}{' (dry run)' if self.dry_run else ''}",
            "",
            f"- challenger release: `{self.release}` (versions {self.versions})",
            f"- champion before: `{self.champion_release}`",
            f"- reason: {self.reason}",
            f"- forced: {self.forced}",
            "",
            "| number | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(self.numbers.items())]
        return "\n".join(lines) + "\n"


class PromotionError(TesseraError):
    """A promotion or rollback cannot be carried out (no such release, no previous champion)."""


def untrusted(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be trusted as accuracy ``key``, or None when it is a finite fraction.

    Phrased as "trusted only if": NaN fails every comparison, so it can never land on the trusted side.
    MLflow's SQL stores keep NaN but write +-inf as +-1.7976931348623157e308 (the largest float).
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        return f"{key!r} is not a number ({value!r})"
    if math.isfinite(v) and 0.0 <= v <= 1.0:
        return None
    if math.isnan(v):
        return f"{key!r} is NaN"
    if math.isinf(v):
        return f"{key!r} is {v}"
    if abs(v) == sys.float_info.max:
        return f"{key!r} is {'-' if v < 0 else ''}inf (stored by MLflow as {v:g})"
    return f"{key!r} is {v:g}, outside [0, 1]"


def _missing_or_untrusted(metrics: dict[str, float], key: str) -> str | None:
    return f"{key!r} is missing" if key not in metrics else untrusted(key, metrics[key])


def decide(
    cfg: Config, challenger: dict[str, float], champion: dict[str, float] | None
) -> tuple[bool, str, dict[str, float]]:
    """The gate itself, pure: (promote?, reason, the numbers it compared).

    It promotes only on numbers it can trust: a gate metric of the challenger that is missing,
    non-finite or outside [0, 1] is a rejection naming it; a champion whose gate metrics are missing
    or untrusted is not compared against: the challenger is judged on the minimums, and the reason
    says so. Every condition is "promote only if ok", so a NaN anywhere (a threshold too) rejects.
    """
    keys = (cfg.clean_metric, cfg.corrupted_metric)
    for key in keys:
        if key not in challenger:
            return False, f"challenger lacks metric {key!r} (run the evaluate step)", {}
    bad = [why for key in keys if (why := untrusted(key, challenger[key])) is not None]
    if bad:
        valid = {
            name: float(challenger[key])
            for name, key in zip(("challenger/clean", "challenger/corrupted"), keys, strict=True)
            if untrusted(key, challenger[key]) is None
        }
        return False, "untrusted challenger metrics: " + "; ".join(bad), valid
    for name in ("max_clean_drop", "min_corrupted_gain", "min_clean_accuracy", "min_corrupted_accuracy"):
        if not math.isfinite(getattr(cfg, name)):
            return False, f"gate threshold {name} is {getattr(cfg, name)!r}, not a finite number", {}
    clean, corr = float(challenger[cfg.clean_metric]), float(challenger[cfg.corrupted_metric])
    numbers = {"challenger/clean": clean, "challenger/corrupted": corr}
    note = ""
    if champion is not None:
        champ_bad = [why for key in keys if (why := _missing_or_untrusted(champion, key)) is not None]
        if champ_bad:
            note = (
                f"champion metrics not comparable ({'; '.join(champ_bad)}): judged on the minimums "
                "as a first champion; "
            )
            champion = None
    if champion is None:
        ok = clean >= cfg.min_clean_accuracy and corr >= cfg.min_corrupted_accuracy
        why = (
            f"clean {clean:.4f} (min {cfg.min_clean_accuracy}), corrupted "
            f"{corr:.4f} (min {cfg.min_corrupted_accuracy})"
        )
        verdict = "meets the minimums; " if ok else "below the minimums; "
        return ok, note + verdict + (why if note else "first champion: " + why), numbers
    c_clean, c_corr = float(champion[cfg.clean_metric]), float(champion[cfg.corrupted_metric])
    drop, gain = c_clean - clean, corr - c_corr
    numbers.update(
        {"champion/clean": c_clean, "champion/corrupted": c_corr, "clean_drop": drop, "corrupted_gain": gain}
    )
    clean_ok, corr_ok = drop <= cfg.max_clean_drop, gain >= cfg.min_corrupted_gain
    if clean_ok and corr_ok:
        return True, f"clean drop {drop:.4f} <= {cfg.max_clean_drop}, corrupted gain {gain:.4f}", numbers
    if not clean_ok:
        return False, f"clean accuracy falls by {drop:.4f} > max_clean_drop {cfg.max_clean_drop}", numbers
    return False, f"corrupted accuracy gain {gain:.4f} < min_corrupted_gain {cfg.min_corrupted_gain}", numbers


@contextlib.contextmanager
def promotion_lock(mlflow_cfg: tracking.Config | None = None, timeout_s: float = 600.0) -> Iterator[None]:
    """Hold the registry-wide promotion lock (advisory lock on PostgreSQL, else a file lock)."""
    uri = tracking.tracking_uri(mlflow_cfg)
    if uri.startswith("postgresql"):
        with _pg_lock(uri, timeout_s):
            yield
        return
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).with_suffix(".promotion.lock")
    else:
        path = tracking.workspace() / "promotion.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionError(f"another promotion holds {path} for over {timeout_s}s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _pg_lock(uri: str, timeout_s: float) -> Iterator[None]:
    import psycopg2

    dsn = "postgresql://" + uri.split("://", 1)[1]  # drop a +driver suffix
    key = zlib.crc32(b"tessera-promotion")
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (int(timeout_s * 1000),))
            cur.execute("SELECT pg_advisory_lock(%s)", (key,))
        yield
    finally:
        with contextlib.suppress(Exception), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
        conn.close()


def with_frozen_fallback(cfg: Config, metrics: dict[str, float]) -> tuple[dict[str, float], str]:
    """A champion evaluated before adaptation policies has no ``corrupted/policy/...`` key: it served
    no proven adaptation, so it is compared on ``corrupted/frozen/mean_accuracy``."""
    if cfg.corrupted_metric != POLICY_METRIC or POLICY_METRIC in metrics or FROZEN_FALLBACK not in metrics:
        return metrics, ""
    return {
        **metrics,
        POLICY_METRIC: metrics[FROZEN_FALLBACK],
    }, " (champion has no policy: its frozen accuracy)"


def _champion_metrics(
    client: Any, cfg: Config, champion: str, data_md5: str | None, reevaluate: Reevaluate | None
) -> tuple[dict[str, float], str]:
    """The champion's metrics (re-measured on the current data when its data version differs),
    with the frozen fallback for champions from before adaptation policies."""
    metrics, note = _champion_metrics_as_logged(client, cfg, champion, data_md5, reevaluate)
    metrics, fallback = with_frozen_fallback(cfg, metrics)
    return metrics, note + fallback


def _champion_metrics_as_logged(
    client: Any, cfg: Config, champion: str, data_md5: str | None, reevaluate: Reevaluate | None
) -> tuple[dict[str, float], str]:
    metrics = registry.release_metrics(client, champion)
    anchor = registry.release_versions(client, champion).get(registry.ANCHOR)
    trained_on = anchor.tags.get("data_version") if anchor is not None else None
    if anchor is None or not (
        data_md5 and trained_on and trained_on != data_md5 and cfg.reevaluate_on_data_change
    ):
        return metrics, ""
    if reevaluate is None:
        return metrics, " (champion NOT re-evaluated: no evaluator given)"
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = registry.download_checkpoint(client, registry.ANCHOR, anchor.version, tmp)
        fresh = reevaluate(ckpt)
    client.set_model_version_tag(
        anchor.name,
        anchor.version,
        f"reevaluated.{data_md5}",
        json.dumps({k: fresh[k] for k in (cfg.clean_metric, cfg.corrupted_metric) if k in fresh}),
    )
    return fresh, f" (champion re-evaluated on data {data_md5[:8]}, trained on {trained_on[:8]})"


def promote(
    release: str | None = None,
    cfg: Config | None = None,
    mlflow_cfg: tracking.Config | None = None,
    *,
    dry_run: bool = False,
    force: bool = False,
    reason: str = "",
    data_md5: str | None = None,
    reevaluate: Reevaluate | None = None,
) -> Decision:
    """Run the gate for ``release`` (default: the current challenger) and move ``champion`` if it passes.

    ``force`` skips the gate and needs ``reason`` (recorded on the versions).
    """
    cfg = cfg or Config()
    if force and not reason.strip():
        raise PromotionError("--force needs --reason TEXT (it is recorded on the model versions)")
    client = tracking.client(mlflow_cfg)
    with promotion_lock(mlflow_cfg, cfg.lock_timeout_s):
        release = release or registry.release_of(client, registry.CHALLENGER)
        if release is None:
            raise PromotionError("no challenger to promote: run `tessera flows retrain` first")
        versions = registry.release_versions(client, release)
        if registry.ANCHOR not in versions:
            raise PromotionError(f"release {release} has no {registry.BUNDLES[registry.ANCHOR]} version")
        champion = registry.release_of(client, registry.CHAMPION)
        decision = Decision(
            release,
            False,
            "",
            champion,
            forced=force,
            dry_run=dry_run,
            versions={k: str(mv.version) for k, mv in versions.items()},
        )
        if champion == release:
            decision.reason = "already champion"
            return decision
        note = ""
        champ_metrics = None
        if champion is not None:
            champ_metrics, note = _champion_metrics(client, cfg, champion, data_md5, reevaluate)
        ok, why, decision.numbers = decide(cfg, registry.release_metrics(client, release), champ_metrics)
        decision.promoted = ok or force
        decision.reason = (f"forced: {reason} (gate said: {why})" if force else why) + note
        if not dry_run:
            _record(client, decision, versions)
    return decision


def _record(client: Any, decision: Decision, versions: dict[str, Any]) -> None:
    """Tag the challenger's versions with the decision; move ``champion`` for the whole release."""
    champion = decision.champion_release
    previous = registry.release_versions(client, champion) if champion else {}
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason[:5000],
        "promotion.forced": str(decision.forced),
        "promotion.numbers": json.dumps(decision.numbers),
        "promotion.time": str(int(time.time())),
        "promotion.previous_release": decision.champion_release or "",
    }
    for mv in versions.values():
        for key, value in tags.items():
            client.set_model_version_tag(mv.name, mv.version, key, value)
    if not decision.promoted:
        return
    for kind, name in registry.BUNDLES.items():
        if kind in versions:
            client.set_registered_model_alias(name, registry.CHAMPION, versions[kind].version)
            with contextlib.suppress(Exception):
                client.delete_registered_model_alias(name, registry.CHALLENGER)
        elif kind in previous:  # the release has no such bundle: do not leave a stale champion
            client.delete_registered_model_alias(name, registry.CHAMPION)


def rollback(
    mlflow_cfg: tracking.Config | None = None,
    to_release: str | None = None,
    reason: str = "rollback",
    lock_timeout_s: float = 600.0,
) -> dict[str, str]:
    """Move ``champion`` for the whole release back to the previous (or a given) release."""
    client = tracking.client(mlflow_cfg)
    with promotion_lock(mlflow_cfg, lock_timeout_s):
        current = registry.release_of(client, registry.CHAMPION)
        if current is None:
            raise PromotionError("no champion to roll back")
        if to_release is None:
            anchor = registry.release_versions(client, current)[registry.ANCHOR]
            to_release = anchor.tags.get("promotion.previous_release") or None
        if not to_release:
            raise PromotionError(f"champion release {current} has no previous champion to roll back to")
        target = registry.release_versions(client, to_release)
        if registry.ANCHOR not in target:
            raise PromotionError(f"release {to_release} has no registered versions")
        for kind, name in registry.BUNDLES.items():
            if kind in target:
                client.set_registered_model_alias(name, registry.CHAMPION, target[kind].version)
                client.set_model_version_tag(name, target[kind].version, "rollback.reason", reason)
            else:
                with contextlib.suppress(Exception):
                    client.delete_registered_model_alias(name, registry.CHAMPION)
        return {kind: str(mv.version) for kind, mv in target.items()}
