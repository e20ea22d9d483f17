"""Time ``F.max_pool2d(x, 2, 2)`` against ``raccnn.models.maxpool.max_pool_2x2`` at a VGG trunk's pool shapes.

    python tools/bench_pool.py [--batch 32] [--width 16] [--size 64] [--threads 2] [--repeats 50]
        [--steps alternate_cls alternate_apn eval plain_cls plain_apn] [--config CONFIG] [--opts ...]

One line per pool of vgg_small at that width and input size (NCHW, the CPU default): forward without
gradient (eval, frozen scales) and forward + backward to the input (training), medians of
``--repeats`` runs with the two implementations timed in turn, and whether outputs and gradients are
bitwise equal. ``--steps`` then times whole steps of ``tools/benchmark.py``'s cases (random tensors,
the config's model at ``--batch``) with the trunks' pools as they are and with ``nn.MaxPool2d`` put
back, the two models' steps in turn for ``--repeats`` rounds: the medians and the median ratio.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys

import torch
import torch.nn.functional as F
from torch import nn

import benchmark  # tools/benchmark.py: its steps and models
from raccnn.errors import ConfigError
from raccnn.models.backbones import min_input_size, vgg_small_plan
from raccnn.models.maxpool import MaxPool2x2, max_pool_2x2


def pool_shapes(batch: int, width: int, size: int):
    """The input shape of each max-pool of vgg_small but the last (which the trunk does not apply)."""
    shapes, channels = [], 3
    for item in vgg_small_plan(width)[:-1]:
        if item == "M":
            shapes.append((batch, channels, size, size))
            size //= 2
        else:
            channels = item
    return shapes


def with_nn_maxpool(model: nn.Module) -> int:
    """Replace, in place, every ``MaxPool2x2`` of ``model`` by ``nn.MaxPool2d(2, 2)``; how many."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(module, name, nn.MaxPool2d(2, 2))
                swapped += 1
    return swapped


def bench_steps(args, cfg):
    device, fmt = torch.device("cpu"), torch.preserve_format
    images, target = benchmark.random_batch(cfg, args.batch, args.classes, device, fmt)
    print(f"steps of {args.config} at batch {args.batch}, ms (medians of {args.repeats} rounds)")
    for case in args.steps:
        models = [benchmark.build_model(cfg, args.classes, device, fmt, False) for _ in range(2)]
        swapped = with_nn_maxpool(models[1])
        steps = [benchmark.make_step(case, m, cfg, images, target, device, None) for m in models]
        times = benchmark.timed_in_turn(steps, args.repeats, 3, device)
        fast, plain = (1000 * statistics.median(t) for t in times)
        ratio = statistics.median(b / a for a, b in zip(*times))
        print(f"{case:14s} nn.MaxPool2d {plain:7.1f}   MaxPool2x2 {fast:7.1f}   nn.MaxPool2d / MaxPool2x2 {ratio:.3f}"
              f"   ({swapped} pools swapped)", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=benchmark.at_least(1), default=32)
    p.add_argument("--width", type=benchmark.at_least(1), default=16)
    p.add_argument("--size", type=benchmark.at_least(min_input_size("vgg_small")), default=64,
                   help="input side; each applied pool needs at least a 2 x 2 map")
    p.add_argument("--threads", type=benchmark.at_least(1), default=2)
    p.add_argument("--repeats", type=benchmark.at_least(1), default=50)
    p.add_argument("--steps", nargs="*", default=[], choices=benchmark.CASES,
                   help="also time these tools/benchmark.py steps with both pools")
    p.add_argument("--config", default="experiments/configs/fgsynth_default.yaml")
    p.add_argument("--opts", nargs="*", default=[])
    p.add_argument("--classes", type=benchmark.at_least(1), default=10)
    args = p.parse_args(argv)
    try:  # a bad config fails here, in one line, before anything is timed
        cfg = benchmark.load_bench_config(args.config, args.opts, torch.device("cpu")) if args.steps else None
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    impls = {"F.max_pool2d": lambda x: F.max_pool2d(x, 2, 2), "max_pool_2x2": max_pool_2x2}
    print(f"cpu ({args.threads} threads), torch {torch.__version__}; medians of {args.repeats}, ms")
    total = {name: [0.0, 0.0] for name in impls}
    for shape in pool_shapes(args.batch, args.width, args.size):
        x = torch.randn(shape).relu()  # as after a ReLU: many tied zeros
        grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
        results = {}

        def forward(fn):
            with torch.no_grad():
                fn(x)

        def forward_backward(fn, name):
            leaf = x.clone().requires_grad_(True)
            out = fn(leaf)
            out.backward(grad)
            results[name] = out, leaf.grad

        steps = [functools.partial(forward, fn) for fn in impls.values()]
        steps += [functools.partial(forward_backward, fn, name) for name, fn in impls.items()]
        t = benchmark.timed_in_turn(steps, args.repeats, 3, torch.device("cpu"))
        times = {name: (t[i], t[len(impls) + i]) for i, name in enumerate(impls)}
        ref_out, ref_grad = results["F.max_pool2d"]
        out, g = results["max_pool_2x2"]
        same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in ((out, ref_out), (g, ref_grad)))
        cells = []
        for name in impls:
            fwd, fwd_bwd = (1000 * statistics.median(t) for t in times[name])
            total[name][0] += fwd
            total[name][1] += fwd_bwd
            cells.append(f"{name} {fwd:6.3f} / {fwd_bwd:6.3f}")
        print(f"{str(list(shape)):18s} forward / forward+backward: {'   '.join(cells)}   bitwise equal: {same}")
    print("all pools          forward / forward+backward: "
          + "   ".join(f"{name} {f:6.3f} / {fb:6.3f}" for name, (f, fb) in total.items()))
    if args.steps:
        bench_steps(args, cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
