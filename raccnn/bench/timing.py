"""The one timing loop of the benchmarks: warm-up rounds, then rounds in which every step runs once
in turn, the device synchronised around each; medians of the rounds and of per-round ratios."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def sync(device: torch.device | None) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; the CPU does not)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Seconds one call of ``fn`` takes, its queued device work included."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def timed_in_turn(steps: Sequence[Callable[[], object]], rounds: int, warmup: int,
                  device: torch.device | None) -> tuple[list[float], ...]:
    """Each step's times (s) over ``rounds`` rounds in which every step runs once, their order
    reversed every other round, after ``warmup`` such rounds: drift in the machine's speed then
    touches all steps alike, and a ratio per round cancels it."""
    for _ in range(warmup):
        for step in steps:
            step()
    times = tuple([] for _ in steps)
    for r in range(rounds):
        for k in (range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))):
            times[k].append(run_once(steps[k], device))
    return times


def timed(step: Callable[[], object], rounds: int, warmup: int, device: torch.device | None) -> float:
    """The median time (s) of ``step`` over ``rounds`` runs after ``warmup`` runs."""
    return statistics.median(timed_in_turn([step], rounds, warmup, device)[0])


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of one step's time over another's in the same round."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def median_ms(times: Sequence[float]) -> float:
    return 1000 * statistics.median(times)
