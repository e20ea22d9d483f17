"""``python -m raccnn.bench [BENCHMARK] [options]``: the benchmarks' command line (``raccnn/bench/cli.py``)."""
from .cli import main

raise SystemExit(main(prog="python -m raccnn.bench"))
