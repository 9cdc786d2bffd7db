"""A ServerApp and a ClientApp written with Flower's API only: each site reports the GPUs Ray
lets it see (``CUDA_VISIBLE_DEVICES``), and the server writes the answers to ``GPUS_OUT``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

client = ClientApp()
server = ServerApp()
SITES = 2  # as the test simulates


@client.query()
def visible(msg: Message, context: Context) -> Message:
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    record = ConfigRecord({"cuda_visible_devices": "unset" if seen is None else seen})
    return Message(RecordDict({"gpus": record}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + 120  # the simulated nodes register as they start
    while len(nodes := list(grid.get_node_ids())) < SITES:
        assert time.monotonic() < deadline, f"only {len(nodes)} nodes came"
        time.sleep(0.1)
    asks = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    answers = [
        str(reply.content.config_records["gpus"]["cuda_visible_devices"])
        for reply in grid.send_and_receive(asks)
    ]
    Path(os.environ["GPUS_OUT"]).write_text(json.dumps(answers))
