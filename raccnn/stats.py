"""Statistics over seeds for ablation tables: t-intervals of a mean and of paired differences; and,
within one run, the exact McNemar test of two heads on the same images and how often a head falls
below its best single scale on test sets redrawn from the same images, or on smaller test splits
drawn from a large one.

Seeds are few (3 to 5), so the intervals use Student's t distribution with n - 1 degrees of freedom
(``scipy.stats.t``, which scikit-learn already installs), not the normal one: with 3 seeds the 95 %
half width is 4.30 standard errors (t with 2 degrees of freedom), not 1.96.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats

LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    std: float  # sample standard deviation (n - 1); 0 for one value
    lo: float  # the two-sided t-interval of the mean at ``LEVEL``; NaN for fewer than two values
    hi: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean, standard deviation and the t-interval of the mean of ``values`` (None skipped)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(xs)
    if n == 1:
        return Interval(mean, 0.0, math.nan, math.nan, 1)
    std = statistics.stdev(xs)
    half = _scipy_stats.t.ppf(0.5 + level / 2, df=n - 1) * std / math.sqrt(n)
    return Interval(mean, std, mean - half, mean + half, n)


def paired_difference(values: dict, baseline: dict, level: float = LEVEL) -> Interval:
    """The t-interval of the mean of ``values[seed] - baseline[seed]`` over the seeds both have
    (pairing by seed removes what the seed does to both rows alike)."""
    seeds = [s for s in values if s in baseline and values[s] is not None and baseline[s] is not None]
    return t_interval([values[s] - baseline[s] for s in seeds], level)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two classifiers scored on the same images: ``only_a``
    images are right by A alone, ``only_b`` by B alone (the images both get right or both get wrong
    say nothing about which is better). Under equal accuracy each of those images is a fair coin,
    so the test is the exact binomial one (``scipy.stats.binomtest``)."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(_scipy_stats.binomtest(only_a, n, 0.5).pvalue)


def resampled_leads(head_right: Sequence[bool], scales_right: Sequence[Sequence[bool]],
                    draws: int = 20000, seed: int = 0) -> np.ndarray:
    """A head's lead over the best single scale (a share of the images, negative when below) on
    ``draws`` test sets drawn with replacement from these images at their number (the
    nonparametric bootstrap); the best scale is taken on each draw. ``head_right`` [N] and each of
    ``scales_right`` [S x N] say which images a head gets right. Their spread says how far a test
    split of this size moves the comparison "the head is at least as good as every scale".

    Images with the same pattern of right and wrong heads are one category, so a draw is one
    multinomial over at most 2^(S+1) categories (numpy's ``Generator.multinomial``)."""
    table = np.vstack([np.asarray(head_right, dtype=bool), np.asarray(scales_right, dtype=bool)]).T
    patterns, counts = np.unique(table, axis=0, return_counts=True)
    drawn = np.random.default_rng(seed).multinomial(len(table), counts / len(table), size=draws)
    right = drawn @ patterns.astype(np.int64)  # [draws, 1 + S]: images right per head and draw
    return (right[:, 0] - right[:, 1:].max(axis=1)) / len(table)


def split_leads(head_right: Sequence[bool], scales_right: Sequence[Sequence[bool]], labels: Sequence,
                per_class: int, draws: int = 20000, seed: int = 0) -> np.ndarray:
    """A head's lead over the best single scale (a share of the images, negative when below) on
    ``draws`` test splits of ``per_class`` images of every class, drawn without replacement from
    these images (``labels`` [N] gives each image's class); the best scale is taken on each split.
    Drawn from a test set much larger than the split, each is a test split the model could have
    been scored on, so their spread is that of a split of this size, measured, not assumed.

    Within a class, images with the same pattern of right and wrong heads are one category, so a
    split is one multivariate hypergeometric draw per class (numpy's
    ``Generator.multivariate_hypergeometric``). ValueError if a class has fewer than ``per_class``
    images."""
    table = np.vstack([np.asarray(head_right, dtype=bool), np.asarray(scales_right, dtype=bool)]).T
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    right = np.zeros((draws, table.shape[1]), dtype=np.int64)
    classes = np.unique(labels)
    for c in classes:
        patterns, counts = np.unique(table[labels == c], axis=0, return_counts=True)
        if counts.sum() < per_class:
            raise ValueError(f"class {c} has {counts.sum()} images, fewer than the {per_class} of a split")
        drawn = rng.multivariate_hypergeometric(counts, per_class, size=draws)
        right += drawn @ patterns.astype(np.int64)
    return (right[:, 0] - right[:, 1:].max(axis=1)) / (per_class * len(classes))
