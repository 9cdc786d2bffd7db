"""Flower's simulation feeder sweeps for messages when the server pushes them (issue 15, item 3).

Flower's engine hands messages to its ClientApp actors from a thread that sweeps the link state
and then pauses 0.1 s on its stop event. Under :func:`wakeable_feeder` Flower's own feeder still
sweeps, but its pause ends at :func:`wake_feeder`, which the tuned in-memory grid calls after
each push.
"""

from __future__ import annotations

import threading
import time
from queue import Queue
from typing import Any

from flwr.server.superlink.fleet.vce import vce_api
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from fedretrain.flower import simulation
from fedretrain.flower.simulation import wake_feeder, wakeable_feeder
from server.app import polled


class LinkState:
    """The one call Flower's feeder makes on the link state: a node's next message."""

    def __init__(self) -> None:
        self.waiting: dict[int, list[str]] = {}
        self.sweeps = 0
        self.lock = threading.Lock()

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        with self.lock:
            self.sweeps += node_id == 1
            taken, self.waiting[node_id] = (
                self.waiting.get(node_id, [])[:limit],
                self.waiting.get(node_id, [])[limit:],
            )
            return taken

    def push(self, node_id: int, message: str) -> None:
        with self.lock:
            self.waiting.setdefault(node_id, []).append(message)


def test_a_pause_between_sweeps_ends_at_a_wake_and_lasts_its_timeout_without_one() -> None:
    stop = threading.Event()
    paused = simulation._WakeableStop(stop)
    simulation._PUSHED.clear()
    began = time.perf_counter()
    assert paused.wait(0.3) is False
    assert time.perf_counter() - began >= 0.29  # no wake: the whole pause
    threading.Timer(0.05, wake_feeder).start()
    began = time.perf_counter()
    assert paused.wait(30.0) is False
    assert time.perf_counter() - began < 10.0  # woken, not the 30 s it was given
    stop.set()
    assert paused.is_set() and paused.wait(0.0) is True


def test_flowers_own_feeder_hands_over_a_pushed_message_and_stops_with_the_run() -> None:
    original = vce_api.add_messages_to_queue
    state, queue, stop = LinkState(), Queue(), threading.Event()  # type: ignore[var-annotated]
    with wakeable_feeder():
        assert vce_api.add_messages_to_queue is not original
        feeder = threading.Thread(
            target=vce_api.add_messages_to_queue, args=(state, queue, {1: 0, 2: 1}, stop)
        )
        feeder.start()
        while state.sweeps == 0:
            time.sleep(0.001)
        state.push(2, "train site 2")
        wake_feeder()
        assert queue.get(timeout=30) == "train site 2"
        stop.set()
        feeder.join(timeout=30)
        assert not feeder.is_alive()
    assert vce_api.add_messages_to_queue is original


def test_the_feeder_gets_the_wakeable_stop_and_a_feeder_of_another_shape_is_left_alone(
    monkeypatch: Any,
) -> None:
    seen: list[Any] = []

    def feeder(state: Any, queue: Any, nodes_mapping: Any, f_stop: Any) -> None:
        seen.append(f_stop)

    monkeypatch.setattr(vce_api, "add_messages_to_queue", feeder)
    stop = threading.Event()
    with wakeable_feeder():
        vce_api.add_messages_to_queue(None, None, {}, stop)
    assert isinstance(seen[0], simulation._WakeableStop) and not seen[0].is_set()
    stop.set()
    assert seen[0].is_set()

    def other(state: Any, queue: Any, nodes_mapping: Any, f_stop: Any, pause: float) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(vce_api, "add_messages_to_queue", other)
    with wakeable_feeder():
        assert vce_api.add_messages_to_queue is other


def test_the_simulation_grid_wakes_the_feeder_after_each_push() -> None:
    pushed: list[list[str]] = []
    memory = InMemoryGrid.__new__(InMemoryGrid)
    memory.pull_interval = 0.1
    memory.push_messages = lambda messages: pushed.append(list(messages)) or ["id"]  # type: ignore[method-assign]
    grid = polled(memory, 0.25)
    simulation._PUSHED.clear()
    assert list(grid.push_messages(["m"])) == ["id"]  # type: ignore[list-item]
    assert pushed == [["m"]] and simulation._PUSHED.is_set()
