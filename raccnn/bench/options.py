"""Option types and option groups that several benchmarks share (one spelling, one check)."""
from __future__ import annotations

import argparse

from ..device import DEVICES

FGSYNTH = "experiments/configs/fgsynth_default.yaml"


def at_least(low: int):
    """An argparse type: an integer >= ``low`` (one clear usage error otherwise)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    return parse


def parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1")


def add_config(p: argparse.ArgumentParser, config: str, classes: int) -> None:
    """``--config``, ``--opts`` and ``--classes``: the model a benchmark builds and times."""
    p.add_argument("--config", default=config)
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--classes", type=at_least(1), default=classes)


def add_device(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--device", default=default, choices=DEVICES)


def add_threads(p: argparse.ArgumentParser, default: int | None) -> None:
    """``--threads``: torch's CPU threads (None: torch's default)."""
    p.add_argument("--threads", type=at_least(1), default=default, help="torch CPU threads")
