"""Benchmarks of training steps, the crop, the max-pool, DDP wraps, local attention and the image check.

    python tools/benchmark.py [steps|crop|pool|ddp|attention|images] [options]
    torchrun --standalone --nproc_per_node=2 tools/benchmark.py ddp [options]

``steps`` when no benchmark is named; ``python tools/benchmark.py BENCHMARK --help`` lists its
options. The benchmarks live in ``raccnn/bench/``.
"""
from raccnn.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
