"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one;
and an exclusive lock for work that several processes may start at once on one folder.

A failed write (disk full, no permission, a file where a folder should be) surfaces as one
``OSError`` naming the destination, whatever library was writing (``torch.save`` wraps the
operating system's error in its own ``RuntimeError``); the CLIs print it as one line, exit code 2.
"""
from __future__ import annotations

import errno
import fcntl
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
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, mode.replace("w", "x"), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.isfile(tmp):
            os.remove(tmp)
        cause = os_error_in(exc)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), path) from None
    _fsync_directory(directory)


def os_error_in(exc: BaseException) -> OSError | None:
    """The operating-system error that ``exc`` is or was raised from, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def describe_os_error(exc: OSError) -> str:
    """One line for the user: the path and what went wrong there."""
    what = exc.strerror or errno.errorcode.get(exc.errno, str(exc))
    if exc.filename is None:
        return what
    target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 else str(exc.filename)
    return f"{target}: {what}"


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Create the folder ``path`` if needed and prove a file can be written in it, before any
    compute starts; an ``OSError`` names the path otherwise (``what`` says which option it is)."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OSError(errno.ENOTDIR, f"{what} is a file, not a folder", path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{secrets.token_hex(4)}")  # runs may check one folder at once
        with atomic_open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the {what} ({exc.strerror})", path) from None


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


@contextmanager
def exclusive_lock(path: str | os.PathLike, wait: bool = True):
    """Hold an exclusive advisory lock on the file ``path`` (created if needed) for the block; a
    second holder waits, or with ``wait=False`` gets ``BlockingIOError`` at once. POSIX ``flock``:
    the OS releases it if the process dies."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
