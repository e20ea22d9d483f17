"""Reading torch files without running code from them.

``torch.load`` unpickles, and a pickle can name any function to call while it is read. Every torch
file raccnn reads (checkpoints, pretrained weights) goes through torch's restricted unpickler
(``weights_only=True``, passed explicitly: torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` only
overrides an unset argument), which builds tensors and plain Python values and refuses anything
else before it runs. ``refusal`` turns that refusal into words for a one-line error.
"""
from __future__ import annotations

import os
import re
import zipfile
from typing import Any

import torch

_REFUSED = re.compile(r"Weights only load failed")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_BLOCKED = re.compile(r"Unsupported globals: ([\w.]+)")  # timm's wrapper of the same refusal


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with the restricted unpickler; its errors propagate (see ``refusal``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def refusal(exc: BaseException, path: str | os.PathLike) -> str | None:
    """What the restricted unpickler refused in ``path``, in words, when ``exc`` is that refusal or
    was raised from it (timm's reader wraps it); None for any other error. Bytes that are no pickle
    at all (a corrupt or truncated file) are refused by the same unpickler, but name no object:
    they count as a refusal only inside a ``torch.save`` archive."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        message = str(exc)
        found = _GLOBAL.search(message) or _BLOCKED.search(message)
        if found:
            return f"a reference to {found.group(1)}"
        if _REFUSED.search(message) and zipfile.is_zipfile(path):
            detail = [line.strip() for line in message.splitlines()[1:] if line.strip()
                      and "weights_only" not in line and "documentation" not in line]
            return (f"content the safe loader refuses ({detail[0].rstrip('.')})" if detail
                    else "content the safe loader refuses")
        exc = exc.__cause__ or exc.__context__
    return None


def unsafe_message(path: str | os.PathLike, what: str) -> str:
    """The one line for a refused file."""
    return (f"refused {os.fspath(path)}: it holds {what}, and a torch file read by raccnn may hold only tensors "
            f"and plain Python values; nothing in it was run or loaded. Checkpoints written by raccnn never hold "
            f"other objects: ask whoever made the file for one saved as a state dict")
