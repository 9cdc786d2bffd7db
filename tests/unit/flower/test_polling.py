"""A deployment round no longer waits for Flower's 3 s pauses (issue 15, item 5).

Flower's deployment grid sleeps 3 s between pulls while a wave's replies are missing, and a
site's SuperExec looks for a new task once a second. The grid's loop runs here on a fake clock
beside :class:`PollingGrid`'s, over the same fake SuperLink, so Flower's own ``send_and_receive``
is the oracle for what comes back and shows what it cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.supercore.superexec.run_superexec import _get_task_poll_interval
from flwr.superlink.grid import http_grid
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedretrain.config import compose
from fedretrain.deploy.launch import SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_S, flower_env
from fedretrain.errors import ConfigError
from fedretrain.flower import polling
from fedretrain.flower.polling import PollingGrid
from fedretrain.preflight import to_typed
from server.app import PULL_INTERVAL_S, polled


class Clock:
    """Time that passes only when somebody sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class SuperLink:
    """A grid's SuperLink side: the reply to message ``i`` is there from ``ready[i]`` on."""

    def __init__(self, clock: Clock, ready: dict[str, float]) -> None:
        self.clock, self.ready = clock, ready
        self.pulls = 0
        self.pushed: list[Any] = []

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        self.pushed = list(messages)
        return [m.metadata.message_id for m in self.pushed]

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        self.pulls += 1
        wanted = set(message_ids)
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i, at in self.ready.items()
            if i in wanted and at <= self.clock.now
        ]


def _messages(ids: Iterable[str]) -> list[Any]:
    return [SimpleNamespace(metadata=SimpleNamespace(message_id=i)) for i in ids]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    fake = SimpleNamespace(time=clock.time, monotonic=clock.time, sleep=clock.sleep)
    monkeypatch.setattr(polling, "time", fake)
    monkeypatch.setattr(http_grid, "time", fake)
    return clock


def _flower(link: SuperLink, messages: list[Any], timeout: float | None) -> list[Any]:
    """Flower's own deployment ``send_and_receive``, over ``link``."""
    return list(http_grid.HttpGrid.send_and_receive(link, messages, timeout=timeout))  # type: ignore[arg-type]


def _ids(replies: Iterable[Any]) -> set[str]:
    return {r.metadata.reply_to_message_id for r in replies}


def test_a_wave_returns_one_interval_after_its_last_reply_where_flower_waits_3_s(
    clock: Clock,
) -> None:
    ready = {"a": 0.35, "b": 1.2, "c": 0.0}
    flower_link = SuperLink(clock, ready)
    flower = _flower(flower_link, _messages(ready), timeout=60)
    flower_took = clock.now
    clock.now, clock.sleeps = 0.0, []
    ours_link = SuperLink(clock, ready)
    ours = PollingGrid(ours_link, interval_s=0.1).send_and_receive(_messages(ready), timeout=60)  # type: ignore[arg-type]
    assert _ids(ours) == _ids(flower) == set(ready)
    assert len(ours) == len(flower) == 3  # each reply once
    assert flower_took == pytest.approx(3.0)  # the last reply came at 1.2 s
    assert 1.2 <= clock.now <= 1.2 + 0.1 + 1e-9
    assert clock.sleeps and all(s == pytest.approx(0.1) for s in clock.sleeps)


def test_a_missing_reply_ends_the_wave_at_its_timeout_with_the_others(clock: Clock) -> None:
    """With a timeout that is not a multiple of 3 s, Flower's loop also loses replies that
    came in time; ours pulls once more at the deadline."""
    ready = {"a": 0.5, "late": 99.0}
    link = SuperLink(clock, ready)
    replies = PollingGrid(link, interval_s=0.3).send_and_receive(_messages(ready), timeout=2.0)  # type: ignore[arg-type]
    assert _ids(replies) == {"a"}
    assert clock.now == pytest.approx(2.0)  # never sleeps past the deadline
    assert max(clock.sleeps) <= 0.3 + 1e-9
    # Flower's loop pulls at 0 s, sleeps 3 s, finds itself past the deadline and returns
    # without pulling again: the reply that came at 0.5 s is lost.
    clock.now = 0.0
    assert _flower(SuperLink(clock, ready), _messages(ready), timeout=2.0) == []


def test_without_a_timeout_it_waits_for_every_reply(clock: Clock) -> None:
    ready = {"a": 40.0, "b": 7.5}
    replies = PollingGrid(SuperLink(clock, ready), interval_s=1.0).send_and_receive(  # type: ignore[arg-type]
        _messages(ready), timeout=None
    )
    assert _ids(replies) == {"a", "b"} and clock.now == pytest.approx(40.0)


def test_the_deployment_grid_is_polled_and_the_simulation_grid_tuned() -> None:
    other = SimpleNamespace()  # any grid without the in-memory grid's pull_interval
    wrapped = polled(other, 0.25)  # type: ignore[arg-type]
    assert isinstance(wrapped, PollingGrid)
    assert wrapped.grid is other and wrapped.interval_s == 0.25
    memory = InMemoryGrid.__new__(InMemoryGrid)
    memory.pull_interval = 0.1
    assert polled(memory, 0.25) is memory and memory.pull_interval == PULL_INTERVAL_S


def test_sites_superexec_looks_for_tasks_every_tenth_of_a_second_unless_told(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv(SUPEREXEC_POLL_ENV, raising=False)
    env = flower_env(tmp_path)
    assert env[SUPEREXEC_POLL_ENV] == str(SUPEREXEC_POLL_S)
    monkeypatch.setattr(os, "environ", env)
    assert _get_task_poll_interval() == pytest.approx(0.1)  # Flower reads and accepts it
    monkeypatch.setattr(os, "environ", {**os.environ, SUPEREXEC_POLL_ENV: "2.5"})
    assert flower_env(tmp_path)[SUPEREXEC_POLL_ENV] == "2.5"  # an operator's value wins


def test_a_poll_interval_out_of_range_fails_at_compose_time() -> None:
    for bad in ("0", "120"):
        with pytest.raises(ConfigError, match=rf"runtime.poll_interval_s={bad}\.?0?: must lie"):
            to_typed(compose([f"runtime.poll_interval_s={bad}"]))
    assert to_typed(compose(["runtime.poll_interval_s=3"])).runtime.poll_interval_s == 3
