"""Crash-safe file replacement, shared by model files, ledgers and indexes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_replace(path: Path, write: Callable[[Path], object]) -> None:
    """Replace ``path`` with what ``write`` puts in a temporary file beside it.

    The temporary file is fsynced, renamed over ``path``, and the folder is fsynced so the
    rename itself survives a power loss: a crash leaves either the old file or the new one.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "state.json"
    >>> atomic_replace(target, lambda tmp: tmp.write_text("{}"))
    >>> target.read_text(), [p.name for p in target.parent.iterdir()]
    ('{}', ['state.json'])
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # mkstemp makes the file 0600; give it the mode the file had, or a new file's mode
        # under the umask. ``write`` may narrow it (a private key does, before writing).
        os.chmod(tmp, _mode_for(path))
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
