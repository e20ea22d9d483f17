"""Seeded, class-stratified train/validation split.

The validation set is carved out of the official *training* images only, so the official
test split is never touched during model selection.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np

SPLITS = ("train", "val", "test", "trainval")
T = TypeVar("T")


def stratified_split(
    labels: Sequence[int], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split positions ``0..len(labels)-1`` into (train, val), stratified by label.

    Rule, per class with ``n`` images:
      * ``n_val = round(val_fraction * n)``;
      * if ``val_fraction > 0`` and ``n >= 2``: at least 1 and at most ``n - 1`` go to val,
        so every class keeps at least one training image;
      * a class with a single image stays entirely in train.
    Which images go to val is drawn with a generator seeded from ``(seed, class)``, so the
    choice for one class does not change when other classes are added or removed.
    Both returned lists are sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels, dtype=np.int64)
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = len(members)
        n_val = int(round(val_fraction * n))
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        else:
            n_val = 0
        rng = np.random.default_rng([int(seed), int(c)])
        chosen = rng.permutation(n)[:n_val]
        mask = np.zeros(n, dtype=bool)
        mask[chosen] = True
        val.extend(members[mask].tolist())
        train.extend(members[~mask].tolist())
    return sorted(train), sorted(val)


def choose_split(split: str, pool: Sequence[T], test: Sequence[T], label_of: Callable[[T], int],
                 val_fraction: float, seed: int) -> list[T]:
    """The items of ``split``: ``train`` and ``val`` are carved from the training ``pool`` by
    ``stratified_split``, ``trainval`` is the whole pool, ``test`` the official test items."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    tr, va = stratified_split([label_of(x) for x in pool], val_fraction, seed)
    return {"train": [pool[i] for i in tr], "val": [pool[i] for i in va], "trainval": list(pool), "test": list(test)}[split]
