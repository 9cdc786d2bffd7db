"""No colour codes where the output is no terminal (issue 16, item 5): Flower's level names and
Ray's prefix of the lines it forwards from simulated sites' actors. A ``flwr run`` stream once
ended with coloured "(ClientAppActor pid=...) WARNING: Manually terminating ClientAppActor"
lines when Ray forwarded them before the run ended."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import Any

import pytest
from ray._private.worker import print_worker_logs

from fedretrain.flower.logs import quiet_flower


def test_rays_forwarded_actor_lines_are_plain_without_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no terminal
    data: dict[str, Any] = {
        "pid": "6008",
        "actor_name": "ClientAppActor",
        "lines": ["WARNING: terminating"],
    }
    before = io.StringIO()
    print_worker_logs(data, before)
    assert "\x1b[" in before.getvalue()  # Ray's default: a coloured prefix
    quiet_flower(level=None)
    after = io.StringIO()
    print_worker_logs(data, after)
    assert after.getvalue() == "(ClientAppActor pid=6008) WARNING: terminating\n"


def test_a_sites_flower_lines_are_plain_once_the_clientapp_is_loaded() -> None:
    """In a fresh interpreter, as a Ray actor or a ClientApp process imports the app."""
    code = (
        "import logging, clients.app\n"
        "from flwr.common.logger import log\n"
        "log(logging.WARNING, 'Manually terminating ClientAppActor')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    output = result.stdout + result.stderr
    assert "Manually terminating ClientAppActor" in output and "\x1b[" not in output
