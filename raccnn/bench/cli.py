"""The benchmarks' one command line: a sub-command per benchmark, ``steps`` when none is named.

    python tools/benchmark.py [steps|crop|pool|ddp|attention|images] [options]
    python -m raccnn.bench [steps|crop|pool|ddp|attention|images] [options]

``python tools/benchmark.py BENCHMARK --help`` describes a benchmark and its options. A bad config
is one ``error:`` line and exit code 2, a bad option one usage line and exit code 2, both before
anything is timed.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from ..cli import report as report_error
from ..errors import RaccnnError
from . import attention, crop, ddp, images, pool, steps

# Each benchmark module gives its NAME, a one-line HELP, its docstring (the sub-command's
# description), add_arguments(parser) and run(args), which returns the document --json writes (None
# where there is none); run raises ConfigError for a bad config, argparse.ArgumentError for options
# that parse alone but not together.
BENCHMARKS = {m.NAME: m for m in (steps, crop, pool, ddp, attention, images)}
DEFAULT = steps.NAME


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        sp = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sp)
        sp.set_defaults(module=module, parser=sp)
    return p


def with_default(argv: list[str]) -> list[str]:
    """``argv`` with ``steps`` put first when it starts with an option (or is empty), so that the
    commands written before the sub-commands existed run unchanged."""
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        return [DEFAULT, *argv]
    return argv


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    return build_parser(prog).parse_args(with_default(list(sys.argv[1:] if argv is None else argv)))


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        report = args.module.run(args)
    except RaccnnError as exc:
        return report_error(exc)
    except argparse.ArgumentError as exc:  # options that parse alone but not together
        args.parser.error(str(exc))
    if report is not None and getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0
