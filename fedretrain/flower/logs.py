"""Flower's and Ray's console noise, quieted where fedretrain reports the same thing itself.

Flower logs every sampling and aggregation step at INFO; fedretrain's own line per round says
what happened. Flower colours its level names with ANSI codes whatever its output is; here only
a handler that writes to a terminal keeps them, so log files and ``flwr run`` streams are plain
text. Ray's driver colours the ``(ClientAppActor pid=...)`` prefix of every line it forwards
from a simulated site (Flower's "Manually terminating ClientAppActor" warnings at the end of a
run, when they arrive in time): ``RAY_COLOR_PREFIX=0`` turns that off when standard output is
no terminal. Ray warns on every start that a future version will stop hiding GPUs from workers that
asked for none; fedretrain relies on today's behaviour (a site with ``gpus_per_client=0`` sees
no GPU), so the warning is dropped rather than the behaviour switched.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

from flwr.common.logger import ConsoleHandler

RAY_GPU_TIP = "Tip: In future versions of Ray, Ray will no longer override accelerator"


def quiet_flower(level: int | None = logging.WARNING) -> None:
    """Flower's logger at ``level`` (None: as it is), its colours only on a terminal, and
    Ray's GPU tip off."""
    flower = logging.getLogger("flwr")
    if level is not None:
        flower.setLevel(level)
    for handler in flower.handlers:
        if isinstance(handler, ConsoleHandler):
            stream = getattr(handler, "stream", None)
            handler.colored = bool(stream is not None and stream.isatty())
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read by Ray's driver as it prints
    warnings.filterwarnings("ignore", message=re.escape(RAY_GPU_TIP), category=FutureWarning)
