"""``fedretrain models promote`` while a server writes the same registry (issue 18, item 7), in
real processes: a writer registers versions and records events as fast as it can, the CLI
promotes meanwhile. No command fails with "database is locked", no event is lost, and the
registry's invariants hold at the end."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fedretrain.registry import Registry, Status

pytestmark = pytest.mark.integration

WRITER = """
import sys
import time
from pathlib import Path
import numpy as np
from fedretrain.registry import Registry
stop, n = Path(sys.argv[2]), 0
with Registry(sys.argv[1]) as registry:
    print("ready", flush=True)
    while not stop.exists() or n < 10:  # writes until the promotions are done
        registry.register(
            {"w": np.full(64, n, np.float32)}, key=f"w{n}", trigger="warm",
            reason="the server's retrain", period=1 + n, parent=1,
        )
        registry.record("watch", period=1 + n, version=1, payload={"n": n})
        n += 1
print(n)
"""


def _registry(run: Path) -> Registry:
    """A new registry in ``run`` whose v1 is the champion; open."""
    registry = Registry(run, create=True)
    registry.register(
        {"w": np.zeros(64, np.float32)}, key="p0", trigger="initial", reason="initial",
        period=0, status=Status.champion,
    )  # fmt: skip
    return registry


def test_a_promotion_while_the_server_writes_loses_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with _registry(run) as registry:
        registry.register(
            {"w": np.ones(64, np.float32)}, key="manual", trigger="warm", reason="offline",
            period=0, parent=1,
        )  # fmt: skip
        before = len(registry.events())
    stop = tmp_path / "stop"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(run), str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    promotions = []
    for version in (2, 1, 2):  # back and forth while the writer goes on
        promotions.append(
            subprocess.run(
                [sys.executable, "-m", "fedretrain.cli", "models", "promote", str(run),
                 str(version), "--reason", "operator"],
                capture_output=True, text=True, timeout=120,
            )
        )  # fmt: skip
    stop.touch()
    out, errors = writer.communicate(timeout=300)
    assert writer.returncode == 0, errors
    writes = int(out.split()[-1])
    assert writes > 10  # the writer was writing all along
    for result in promotions:
        assert result.returncode == 0, result.stderr
        assert "locked" not in result.stderr
    with Registry(run) as registry:
        assert registry.check_invariants() == []
        events = registry.events()
        assert len(registry.versions()) == 2 + writes
        assert len(registry.events(kind="watch")) == writes
        manual = [e for e in registry.events(kind="promote") if e.payload.get("manual")]
        assert [e.payload["to"] for e in manual] == [2, 1, 2]
        assert registry.champion().version == 2  # type: ignore[union-attr]
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) and len(events) > before


def test_a_server_killed_while_it_writes_leaves_a_whole_registry(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _registry(run).close()
    for kill in range(3):  # SIGKILL mid-write, three times, each after a different delay
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER.replace('f"w{n}"', f'f"k{kill}-{{n}}"'), str(run),
             str(tmp_path / "never")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.3 * kill)
        writer.kill()
        writer.wait()
        check = subprocess.run(
            [sys.executable, "-m", "fedretrain.cli", "models", "check", str(run)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("ok: ") and "every model file verified" in check.stdout
    with Registry(run) as registry:
        versions = registry.versions()
        assert registry.check_invariants() == []
        registered = {e.version for e in registry.events(kind="register")}
    assert len(versions) > 3 and registered == {v.version for v in versions}
