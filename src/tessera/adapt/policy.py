"""The adaptation policy of a release: which test-time method serving applies by default, and why.

``evaluate`` measures every method against the frozen model on the same images (a paired gain with
an interval resampled by source image, :mod:`tessera.adapt.stats`) and its cost per image, then
:func:`choose` picks the **cheapest** candidate whose interval's lower bound is above zero and whose
cost fits the latency budget, judged on the selection corruptions (the 4 extra CIFAR-10-C ones when
they were evaluated, so the 15 reported ones stay untouched by the choice); when nothing is proven to
help, the policy is ``none``: serve the frozen prediction. A candidate must be a method the serving
endpoint can apply per request (:data:`SERVABLE`); others are reported, not chosen.

The policy is a plain JSON-able dict stored in the classifier checkpoint (``extra["policy"]``) and
in ``adaptation_policy.json``; its ``version`` is the hash of its JSON. :func:`resolve` is the one
rule every runtime applies (the TorchServe handler, ``tessera predict``): an explicit method or budget
in the request, then the policy, then the server's default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

NONE = "none"
TTT = "ttt_mae_episodic"  # what a request that sends a TTT budget (steps/copies) without a method gets
SCHEMA = 1
# What the TTT classifier endpoint can apply to one request on its own (no state across requests):
# normalisation statistics of the request's images, TENT reset per request, TTT-MAE per image.
SERVABLE: tuple[str, ...] = ("normstat", "tent_episodic", TTT)
METHODS_SERVED: tuple[str, ...] = (NONE, *SERVABLE)


@dataclass(frozen=True)
class Candidate:
    """One method at one budget, as measured on the selection corruptions."""

    method: str
    budget: dict[str, Any]  # e.g. {"steps": 20, "copies": 16}
    gain: float  # paired mean accuracy gain over frozen
    ci_low: float
    ci_high: float
    seconds_per_image: float
    images: int  # distinct source images behind the gain
    servable: bool = True


def version_of(policy: Mapping[str, Any]) -> str:
    """The first 12 hex digits of the sha256 of the policy's canonical JSON (without ``version``)."""
    body = {k: v for k, v in policy.items() if k != "version"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=float)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def choose(
    candidates: list[Candidate],
    *,
    max_seconds_per_image: float,
    selected_on: list[str],
    reported: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """The policy: the cheapest servable candidate with ``ci_low > 0`` within the latency budget.

    ``reported`` (method -> {gain, ci_low, ci_high} on the reported corruptions) travels along for
    people to read; it takes no part in the choice.
    """
    fit = [
        c
        for c in candidates
        if c.servable and c.ci_low > 0.0 and c.seconds_per_image <= max_seconds_per_image
    ]
    chosen = min(fit, key=lambda c: (c.seconds_per_image, -c.gain)) if fit else None
    if chosen is not None:
        reason = (
            f"{chosen.method} gains {chosen.gain:+.3f} over frozen (95% interval {chosen.ci_low:+.3f} to "
            f"{chosen.ci_high:+.3f}, {chosen.images} images) at {chosen.seconds_per_image:.3f} s/image"
        )
    elif not candidates:
        reason = "no servable test-time method was evaluated"
    else:
        best = max(candidates, key=lambda c: c.ci_low)
        reason = (
            f"no method is proven to help within {max_seconds_per_image:g} s/image: the best lower bound "
            f"is {best.method}'s {best.ci_low:+.3f} (gain {best.gain:+.3f})"
        )
    policy: dict[str, Any] = {
        "schema": SCHEMA,
        "method": chosen.method if chosen else NONE,
        "budget": dict(chosen.budget) if chosen else {},
        "reason": reason,
        "selected_on": list(selected_on),
        "max_seconds_per_image": float(max_seconds_per_image),
        "candidates": [asdict(c) for c in candidates],
        "reported": {m: dict(v) for m, v in (reported or {}).items()},
    }
    policy["version"] = version_of(policy)
    return policy


@dataclass(frozen=True)
class Decision:
    """What one request gets: the method, its budget, and who decided (request, policy or server)."""

    method: str
    budget: dict[str, Any]
    source: str
    policy_version: str | None


def resolve(
    policy: Mapping[str, Any] | None,
    requested_method: str | None,
    requested_budget: Mapping[str, Any],
    server_method: str,
    server_budget: Mapping[str, Any],
) -> Decision:
    """Precedence: an explicit method or budget in the request, then the policy, then the server.

    A request that sends a budget (``steps``/``copies``) without a method asks for TTT-MAE; one that
    sends ``method: none`` gets the frozen prediction whatever its budget says. The TTT-MAE budget
    (``steps``, ``copies``) is the server's overlaid by the policy's and the request's; another method
    gets the settings the policy measured it with (e.g. normstat's ``prior``), else its own defaults.
    """
    version = str(policy["version"]) if policy else None
    if requested_method is not None and requested_method not in METHODS_SERVED:
        raise ValueError(f"method {requested_method!r} is not served here; use one of {list(METHODS_SERVED)}")
    if requested_method is not None or requested_budget:
        method = requested_method or TTT
        base = dict(policy.get("budget") or {}) if policy and policy.get("method") == method else {}
        if method != TTT and policy:  # the settings the policy measured this method with
            base = _measured_budget(policy, method)
        return Decision(method, _budget(method, server_budget, base, requested_budget), "request", version)
    if policy:
        method = str(policy.get("method", NONE))
        return Decision(method, _budget(method, server_budget, policy.get("budget") or {}), "policy", version)
    return Decision(server_method, _budget(server_method, server_budget, {}), "server", None)


def _measured_budget(policy: Mapping[str, Any], method: str) -> dict[str, Any]:
    for c in policy.get("candidates") or []:
        if c.get("method") == method:
            return dict(c.get("budget") or {})
    return {}


def _budget(method: str, server: Mapping[str, Any], *layers: Mapping[str, Any]) -> dict[str, Any]:
    if method == NONE:
        return {}
    merged: dict[str, Any] = dict(server) if method == TTT else {}
    for layer in layers:
        merged.update(layer)
    if method != TTT:  # a TTT budget sent along with another method has nothing to bound
        merged = {k: v for k, v in merged.items() if k not in ("steps", "copies")}
    return merged
