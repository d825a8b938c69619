"""The torch thread rule (``tessera.threads``): its table of cases, the cgroup quota, and apply()."""

from __future__ import annotations

import pytest
import torch

from tessera import threads


@pytest.mark.parametrize(
    ("cores", "sharers", "load", "expected"),
    [
        (1, 1, None, 1),
        (1, 4, 0.0, 1),
        (2, 1, None, 1),  # <= 2 cores: one thread, idle or not (bench/threads.py)
        (2, 1, 0.0, 1),
        (2, 2, 3.0, 1),
        (4, 1, None, 4),
        (4, 1, 0.2, 4),
        (4, 2, 0.0, 2),
        (4, 4, 0.0, 1),
        (4, 1, 1.0, 3),  # one core busy elsewhere: the threads fit the idle ones
        (4, 1, 3.5, 1),  # loaded: load >= cores - 0.5
        (4, 2, 8.0, 1),
        (16, 1, None, 16),
        (16, 1, 0.4, 16),
        (16, 2, 0.0, 8),
        (16, 4, 1.0, 4),
        (16, 1, 4.0, 12),
        (16, 1, 15.5, 1),
        (16, 4, 40.0, 1),
    ],
)
def test_threads_rule_table(cores: int, sharers: int, load: float | None, expected: int) -> None:
    assert threads.choose(cores, sharers, load, None) == expected


def test_threads_override_wins_and_nothing_goes_below_one() -> None:
    assert threads.choose(2, 1, 5.0, 3) == 3
    assert threads.choose(16, 4, None, 1) == 1
    assert threads.choose(1, 1, None, 8) == 8
    assert threads.choose(16, 1, None, 0) == 16  # 0: no override
    assert threads.choose(16, 1, None, -2) == 16
    for cores in (0, 1, 2, 3, 16):
        for sharers in (0, 1, 2, 64):
            for load in (None, -1.0, 0.0, 100.0):
                assert threads.choose(cores, sharers, load, None) >= 1


def test_threads_cgroup_cpu_max_parser() -> None:
    assert threads.parse_cpu_max("max 100000") is None
    assert threads.parse_cpu_max("max 100000\n") is None
    assert threads.parse_cpu_max("200000 100000") == 2.0
    assert threads.parse_cpu_max("50000 100000") == 0.5
    assert threads.parse_cpu_max("150000 100000\n") == 1.5
    assert threads.parse_cpu_max("-1 100000") is None  # cgroup v1: no quota
    assert threads.parse_cpu_max("") is None
    assert threads.parse_cpu_max("garbage") is None


def test_threads_available_cores_follow_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert threads.available_cores() == 8
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 2.0)
    assert threads.available_cores() == 2
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 0.5)
    assert threads.available_cores() == 1
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 64.0)
    assert threads.available_cores() == 8


def test_threads_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.threads_for(4) == 4
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.threads_for(4) == 3
    assert threads.threads_for(4, override=2) == 2  # an explicit setting (serve.torch_threads) first
    for unset in ("0", "", "many"):
        monkeypatch.setenv(threads.ENV, unset)
        assert threads.threads_for(4) == 4


def test_threads_apply_sets_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "available_cores", lambda: 16)
        monkeypatch.setattr(threads, "load_average", lambda: 0.0)
        monkeypatch.setenv(threads.ENV, "2")
        assert threads.apply() == 2 and torch.get_num_threads() == 2
        monkeypatch.delenv(threads.ENV)
        assert threads.apply(sharers=16) == 1 and torch.get_num_threads() == 1
        assert threads.apply() == threads.choose(16, 1, 0.0, None) == torch.get_num_threads()

        def broken() -> int:
            raise OSError("no /proc")

        monkeypatch.setattr(threads, "available_cores", broken)
        assert threads.apply() == 1 and torch.get_num_threads() == 1  # never raises
    finally:
        torch.set_num_threads(before)


def test_threads_steps_apply_the_rule_unless_omp_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from components import command

    before = torch.get_num_threads()
    seen: list[int] = []
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv(threads.ENV, "2")
        command.run_command(lambda: seen.append(torch.get_num_threads()), [], "step")
        monkeypatch.delenv(threads.ENV)
        torch.set_num_threads(3)
        assert command.step_threads() is None and torch.get_num_threads() == 3  # OMP_NUM_THREADS chose
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


def test_threads_serving_workers_share_the_cores_by_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving import package
    from serving.handlers.base import worker_threads

    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "load_average", lambda: 0.0)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert worker_threads({}, {"maxWorkers": 1}) == 1  # the 2-core box: 1.5 ms vs ~100 ms with 2
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    assert worker_threads({}, {"maxWorkers": 1}) == 16
    assert worker_threads({}, {"minWorkers": 2, "maxWorkers": 4}) == 4
    assert worker_threads({}, {"minWorkers": 2}) == 8
    assert worker_threads({}, {"maxWorkers": 64}) == 1
    assert worker_threads({"torch_threads": 3}, {"maxWorkers": 2}) == 3  # serve.torch_threads wins
    monkeypatch.setenv(threads.ENV, "5")
    assert worker_threads({}, {"maxWorkers": 2}) == 5
    assert worker_threads({"torch_threads": 3}, {"maxWorkers": 2}) == 3
    assert "torch_threads" not in package.model_config(package.Config(), "encoder")["handler"]
