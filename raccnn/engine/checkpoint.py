"""Checkpoint files: atomic saving, safe loading with clear errors, RNG state, compatibility.

A checkpoint is a dict saved with ``torch.save``. Checkpoints meant for
resuming should hold at least ``"config"`` (the resolved config) and
``"num_classes"`` so that ``check_compatible`` can compare them with the
current run.

Every checkpoint is read with torch's restricted unpickler (``raccnn/safeload.py``): tensors, plain
Python containers, numbers and strings load, and a file holding any other object is refused
before any of it runs; raccnn's own checkpoints hold nothing else (``capture_rng_state`` returns
tensors and plain values for that reason).
"""

from __future__ import annotations

import os
import random
import zipfile
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from ..fileio import atomic_open
from ..safeload import load_tensors, refusal, unsafe_message

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "ARCHITECTURE_KEYS",
    "save_checkpoint",
    "load_checkpoint",
    "capture_rng_state",
    "restore_rng_state",
    "check_compatible",
]




# Config keys that change the model's parameters: their shapes, or which modules hold any.
ARCHITECTURE_KEYS = (
    "model.backbone",
    "model.width",
    "model.n_scales",
    "model.input_sizes",
    "model.apn.hidden",
    "model.apn.pool_size",
    "model.attention.type",
    "model.attention.stages",
    "model.attention.kwargs",
    "model.attention.replace_convs",
    "model.proposer",
    "model.fusion",
)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Save ``state`` to ``path`` so that ``path`` never holds a half-written file.

    The data goes to a temporary file in the same directory, is flushed to
    disk, and then replaces ``path`` in one step. On failure the temporary
    file is removed and any previous file at ``path`` is left as it was.
    """
    with atomic_open(path, "wb") as f:
        torch.save(dict(state), f)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict with torch's safe loader; raises ``CheckpointError`` naming ``path``
    on any problem, and ``UnsafeCheckpointError`` (before anything in the file runs) when it holds
    an object other than tensors and plain Python values."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint path is not a file: {path}")
    try:
        state = load_tensors(path, map_location)
    except Exception as e:  # torch raises many kinds of errors for bad files
        what = refusal(e, path)
        if what is not None:
            raise UnsafeCheckpointError(unsafe_message(path, what)) from None
        if not zipfile.is_zipfile(path):
            reason = "it is not a torch.save archive (corrupt, truncated or another format?)"
        else:
            reason = f"{type(e).__name__}: {_first_line(e)}"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def capture_rng_state() -> dict:
    """The state of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``capture_rng_state`` returned (missing parts are left alone).

    CUDA states are restored for as many devices as both the state and this
    machine have.
    """
    if "python" in state:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(int(x) for x in internal), gauss_next))
    if "numpy" in state:
        s = state["numpy"]
        keys = np.asarray(torch.as_tensor(s["keys"]).numpy(), dtype=np.uint32)
        np.random.set_state((s["kind"], keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, s in enumerate(cuda_states[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(torch.as_tensor(s, dtype=torch.uint8).cpu(), device)


_MISSING = object()


def _lookup(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return list(node) if isinstance(node, tuple) else node


def _show(value: Any) -> str:
    return "nothing" if value is _MISSING else repr(value)


def check_compatible(ckpt: Mapping[str, Any], cfg: Mapping[str, Any], num_classes: int) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` has the architecture ``cfg`` describes.

    ``ckpt`` must hold ``"config"`` (the resolved config it was trained with)
    and ``"num_classes"``. Every mismatch is listed in the one error message.
    """
    if "config" not in ckpt or not isinstance(ckpt["config"], Mapping):
        raise CheckpointError("checkpoint has no 'config' entry to check against the config")
    mismatches = []
    for key in ARCHITECTURE_KEYS:
        theirs, ours = _lookup(ckpt["config"], key), _lookup(cfg, key)
        if theirs != ours:
            mismatches.append(f"{key}: checkpoint has {_show(theirs)}, config has {_show(ours)}")
    theirs = ckpt.get("num_classes", _MISSING)
    if theirs != num_classes:
        mismatches.append(f"num_classes: checkpoint has {_show(theirs)}, "
                          f"the dataset has {num_classes}")
    if mismatches:
        raise CheckpointError("checkpoint does not match the config:\n  "
                              + "\n  ".join(mismatches))


def check_same_plan(ckpt: Mapping[str, Any], labels: list[str], path) -> None:
    """Raise ``CheckpointError`` unless ``ckpt`` was written at the phase that stands at its position
    in this plan of phases (``labels``): a refit's checkpoint cannot continue a training."""
    index = ckpt["progress"]["phase_index"]
    here = labels[min(index, len(labels) - 1)]
    if ckpt.get("phase") != here:
        raise CheckpointError(f"{path} was written at phase {ckpt.get('phase')!r} of another plan of phases "
                              f"(position {index} here is {here!r}); "
                              f"a run of tools/refit_fusion.py cannot be continued by tools/train.py")
