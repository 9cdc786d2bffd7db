"""A deployment grid that asks for a wave's replies as often as we choose.

Flower's deployment grid (``flwr.superlink.grid.http_grid.HttpGrid`` in 1.42) sleeps a fixed
3 s between pulls in ``send_and_receive``, so every message wave of a round waited on average
1.5 s after its last reply had reached the SuperLink. :class:`PollingGrid` keeps Flower's grid
for everything and only replaces that loop, over the grid's own public ``push_messages`` and
``pull_messages``: the same requests to the SuperLink, at ``interval_s``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid


class PollingGrid(Grid):
    """``grid`` with ``send_and_receive`` pulling every ``interval_s`` seconds.

    Parameters
    ----------
    grid : Grid
        Flower's grid of the run; every other call goes to it unchanged.
    interval_s : float
        The pause between two pulls while replies are missing (``runtime.poll_interval_s``).
    """

    def __init__(self, grid: Grid, interval_s: float) -> None:
        self.grid = grid
        self.interval_s = interval_s

    def set_run(self, run):  # type: ignore[no-untyped-def]
        self.grid.set_run(run)

    @property
    def run(self):  # type: ignore[no-untyped-def]
        return self.grid.run

    def create_message(  # noqa: PLR0913 - Flower's signature
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """The replies to ``messages`` that arrive within ``timeout`` seconds (None: all of
        them, however long they take), as Flower's ``send_and_receive`` returns them."""
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            pulled = list(self.grid.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            pause = self.interval_s
            if deadline is not None:
                pause = min(pause, max(deadline - time.monotonic(), 0.0))
            time.sleep(pause)
        return replies
