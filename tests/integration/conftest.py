"""What the integration tests share: running ``python -m fedretrain`` and the ``fedretrain`` CLI
as the user would, in subprocesses."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Simulate = Callable[..., Path]
Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def simulate() -> Simulate:
    """``simulate(out, *overrides)``: a finished simulation's run folder ``out``."""

    def run(out: Path, *overrides: str) -> Path:
        result = subprocess.run(
            [sys.executable, "-m", "fedretrain", *overrides, f"hydra.run.dir={out}"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "fedretrain summary" in result.stdout
        return out

    return run


@pytest.fixture(scope="session")
def cli() -> Cli:
    """``cli(*args)``: the finished ``fedretrain`` command, output captured."""

    def run(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedretrain.cli", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run
