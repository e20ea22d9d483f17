"""Checking every image of a dataset when it is opened, so a corrupt file fails before training.

Modes (``data.verify_images``):

- ``header`` (default): the file opens as an image and its size is read; a JPEG must end with its
  end-of-image marker and a PNG with its IEND chunk (a truncated file loses them). A file without
  them (e.g. trailing bytes after the marker) is decoded in full to decide.
- ``full``: every file is decoded in full, as training will.
- ``none``: nothing is checked; a bad file then fails when a batch reads it.

The files are checked in parallel threads (decoding releases the GIL), with a progress bar on a
terminal. The result (each image's size, and the error of each bad file) is cached in
``.raccnn_image_check.json`` beside the annotations (in ``~/.cache/raccnn`` when that folder is
read-only), keyed on the mode and every file's path, size and modification time, so reopening an
unchanged dataset only stats its files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm import tqdm

from ..fileio import atomic_open
from ..errors import DatasetError
from .images import load_rgb

log = logging.getLogger(__name__)
VERIFY_MODES = ("header", "full", "none")
CACHE_NAME = ".raccnn_image_check.json"
SHOWN = 5  # bad files named in an error message; the rest are counted
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}
_TAIL = 1024  # bytes searched for the end marker (a JPEG may carry padding after it)


def check_image(path: Path, full: bool) -> tuple[int, int] | str:
    """(width, height) of a readable image in its stored orientation (the pixels annotations refer
    to), else the reason it cannot be read."""
    try:
        if full:
            return load_rgb(path, exif_transpose=False).size
        with Image.open(path) as im:
            size, marker = im.size, _END_MARKERS.get(im.format)
        if marker is not None:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - _TAIL))
                if marker in f.read():
                    return size
        return load_rgb(path, exif_transpose=False).size  # no marker to look for, or it is missing: decode to decide
    except DatasetError as exc:  # from load_rgb, which names the path already known here
        return _reason(exc.__cause__ or exc)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return _reason(exc)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image format PIL can read"
    return str(exc) or type(exc).__name__


def _fingerprint(paths: Sequence[Path], mode: str) -> str:
    h = hashlib.sha256(mode.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"\0{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _cache_files(folder: Path, key: str) -> list[Path]:
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "raccnn"
    return [folder / CACHE_NAME, user / f"image_check_{key[:16]}.json"]


def _read_cache(files: list[Path], key: str) -> dict | None:
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("key") == key:
            return data
    return None


def _write_cache(files: list[Path], data: dict) -> None:
    for f in files:
        try:
            with atomic_open(f, "w") as out:
                json.dump(data, out)
            return
        except OSError:
            continue  # read-only dataset folder: the user cache instead; neither: no cache
    log.warning("could not cache the image check in %s", " or ".join(map(str, files)))


def verify_images(paths: Sequence[Path], mode: str, cache_folder: Path, workers: int | None = None
                  ) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    """Check ``paths`` (see the module docstring). Returns the size of every readable image and
    the error of every unreadable one."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify mode must be one of {VERIFY_MODES}, got {mode!r}")
    if mode == "none" or not paths:
        return {}, {}
    paths = list(paths)
    key = _fingerprint(paths, mode)
    files = _cache_files(Path(cache_folder), key)
    cached = _read_cache(files, key)
    if cached is not None:
        sizes = {p: tuple(cached["sizes"][str(p)]) for p in paths if str(p) in cached["sizes"]}
        return sizes, {p: cached["bad"][str(p)] for p in paths if str(p) in cached["bad"]}

    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    full = mode == "full"
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(lambda p: check_image(p, full), paths), total=len(paths),
                            desc=f"checking images ({mode})", leave=False,
                            disable=len(paths) < 1000 or not sys.stderr.isatty()))
    sizes = {p: r for p, r in zip(paths, results) if isinstance(r, tuple)}
    bad = {p: r for p, r in zip(paths, results) if isinstance(r, str)}
    _write_cache(files, {"key": key, "mode": mode, "sizes": {str(p): s for p, s in sizes.items()},
                         "bad": {str(p): e for p, e in bad.items()}})
    return sizes, bad


def drop_unreadable(items: list, bad: dict[Path, str], path_of, split: str) -> list:
    """``items`` without those whose image is in ``bad``, with one warning for the split."""
    kept = [item for item in items if path_of(item) not in bad]
    if len(kept) < len(items):
        first = next(path_of(item) for item in items if path_of(item) in bad)
        log.warning("split %s: skipping %d unreadable image(s) (data.skip_unreadable), e.g. %s",
                    split, len(items) - len(kept), first)
    return kept


def unreadable_message(bad: dict[Path, str], where: str) -> str:
    """One message naming the first few unreadable files, their reasons and the count."""
    items = sorted(bad.items())
    shown = "; ".join(f"{p}: {e}" for p, e in items[:SHOWN])
    more = f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return (f"{len(items)} unreadable image(s) in {where}: {shown}{more}. Replace them, or set "
            f"data.skip_unreadable=true to train without them")
