"""The adaptation policy: the cheapest method proven to help within the latency budget, else none;
and the precedence every runtime applies (request, then policy, then server)."""

from __future__ import annotations

import pytest

from tessera.adapt.policy import NONE, Candidate, choose, resolve, version_of

BUDGET = {"steps": 20, "copies": 16}


def _c(method: str, low: float, cost: float, servable: bool = True, gain: float = 0.05) -> Candidate:
    return Candidate(method, {"steps": 5}, gain, low, gain + 0.05, cost, 300, servable)


def test_the_cheapest_candidate_whose_lower_bound_is_above_zero_is_chosen() -> None:
    candidates = [
        _c("ttt_mae_episodic", 0.01, 0.50),
        _c("ttt_mae_fast", 0.02, 0.10),
        _c("cheap_but_unproven", -0.01, 0.01),  # cheapest, but its interval reaches below 0
        _c("tent", 0.05, 0.001, servable=False),  # proven and cheapest, but not servable
        _c("too_slow", 0.2, 9.0),  # beyond the latency budget
    ]
    policy = choose(candidates, max_seconds_per_image=5.0, selected_on=["spatter"])
    assert policy["method"] == "ttt_mae_fast" and policy["budget"] == {"steps": 5}
    assert policy["selected_on"] == ["spatter"] and "ttt_mae_fast gains" in policy["reason"]
    assert policy["version"] == version_of(policy) and len(policy["version"]) == 12


def test_none_when_nothing_is_proven_to_help() -> None:
    policy = choose(
        [_c("ttt_mae_episodic", -0.02, 0.1), _c("rotation", 0.0, 0.1)],
        max_seconds_per_image=5.0,
        selected_on=["spatter"],
    )
    assert policy["method"] == NONE and policy["budget"] == {}
    assert "no method is proven to help" in policy["reason"] and "rotation" in policy["reason"]
    assert choose([], max_seconds_per_image=1.0, selected_on=[])["method"] == NONE


def test_the_version_is_the_hash_of_the_content() -> None:
    a = choose([_c("ttt_mae_episodic", 0.01, 0.5)], max_seconds_per_image=5.0, selected_on=["spatter"])
    b = choose([_c("ttt_mae_episodic", 0.01, 0.5)], max_seconds_per_image=5.0, selected_on=["spatter"])
    c = choose([_c("ttt_mae_episodic", 0.011, 0.5)], max_seconds_per_image=5.0, selected_on=["spatter"])
    assert a["version"] == b["version"] != c["version"]


def test_request_then_policy_then_server() -> None:
    adapt = {"version": "v1", "method": "ttt_mae_episodic", "budget": {"steps": 5, "copies": 4}}
    off = {"version": "v2", "method": NONE, "budget": {}}
    # the policy, when the request says nothing
    d = resolve(adapt, None, {}, NONE, BUDGET)
    assert (d.method, d.budget, d.source, d.policy_version) == (
        "ttt_mae_episodic",
        {"steps": 5, "copies": 4},
        "policy",
        "v1",
    )
    assert resolve(off, None, {}, "ttt_mae_episodic", BUDGET).method == NONE
    # an explicit method or budget in the request wins over the policy
    d = resolve(off, "ttt_mae_episodic", {"steps": 2}, NONE, BUDGET)
    assert (d.method, d.budget["steps"], d.budget["copies"], d.source) == (
        "ttt_mae_episodic",
        2,
        16,
        "request",
    )
    assert (
        resolve(off, None, {"steps": 3}, NONE, BUDGET).method == "ttt_mae_episodic"
    )  # a budget asks to adapt
    d = resolve(adapt, NONE, {"steps": 9}, NONE, BUDGET)
    assert (d.method, d.budget, d.source) == (NONE, {}, "request")
    # the server's default when there is no policy (a checkpoint from before policies)
    d = resolve(None, None, {}, NONE, BUDGET)
    assert (d.method, d.source, d.policy_version) == (NONE, "server", None)
    with pytest.raises(ValueError, match="not served"):
        resolve(adapt, "tent", {}, NONE, BUDGET)


def test_per_request_methods_get_the_settings_they_were_measured_with() -> None:
    measured = {"prior": 16.0, "request_images": 16}
    candidates = [
        Candidate("normstat", measured, 0.03, 0.01, 0.05, 0.001, 300),
        Candidate("tent_episodic", {"tent_steps": 1, "tent_lr": 1e-3}, 0.04, 0.02, 0.06, 0.003, 300),
        Candidate("ttt_mae_episodic", {"steps": 5, "copies": 8}, 0.05, 0.03, 0.07, 0.2, 300),
    ]
    policy = choose(candidates, max_seconds_per_image=5.0, selected_on=["spatter"])
    assert policy["method"] == "normstat"  # proven, and the cheapest
    d = resolve(policy, None, {}, NONE, BUDGET)
    assert (d.method, d.budget, d.source) == ("normstat", measured, "policy")  # no TTT budget in it
    d = resolve(policy, "tent_episodic", {}, NONE, BUDGET)  # another servable method, by request
    assert (d.method, d.budget, d.source) == ("tent_episodic", {"tent_steps": 1, "tent_lr": 1e-3}, "request")
    d = resolve(policy, None, {"steps": 3}, NONE, BUDGET)  # a TTT budget asks for TTT-MAE
    assert (d.method, d.budget) == ("ttt_mae_episodic", {"steps": 3, "copies": 16})
