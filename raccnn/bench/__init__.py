"""Benchmarks: one command line, one timing loop (``timing.py``), a module per benchmark.

``steps`` (training steps, evaluation, data loading), ``crop``, ``pool``, ``ddp``, ``attention`` and
``images``; run them with ``python tools/benchmark.py [BENCHMARK] [options]`` or
``python -m raccnn.bench [BENCHMARK] [options]`` (``steps`` when none is named).
"""
from .cli import BENCHMARKS, build_parser, main, parse_args

__all__ = ["BENCHMARKS", "build_parser", "main", "parse_args"]
