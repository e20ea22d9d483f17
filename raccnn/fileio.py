"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one."""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager

_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_open names its temporary files


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs):
    """Open a temporary file beside ``path`` for writing; on success it is flushed to disk and
    renamed over ``path`` in one step, on failure it is removed and ``path`` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the temporary files that an interrupted ``atomic_open`` left in ``directory``
    (call it before anything writes there); returns their names."""
    names = [n for n in os.listdir(directory) if _TEMPORARY.match(n)] if os.path.isdir(directory) else []
    for name in names:
        os.remove(os.path.join(directory, name))
    return names


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable where the platform allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
