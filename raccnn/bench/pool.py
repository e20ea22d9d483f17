"""Time ``F.max_pool2d(x, 2, 2)`` against ``raccnn.models.maxpool.max_pool_2x2`` at a VGG trunk's pool shapes.

    python tools/benchmark.py pool [--batch 32] [--width 16] [--size 64] [--threads 2] [--repeats 50]
        [--steps alternate_cls alternate_apn eval plain_cls plain_apn] [--config CONFIG] [--opts ...]

One line per pool of vgg_small at that width and input size (NCHW, the CPU default): forward without
gradient (eval, frozen scales) and forward + backward to the input (training), medians of
``--repeats`` runs with the two implementations timed in turn, and whether outputs and gradients are
bitwise equal. ``--steps`` then times whole steps of the ``steps`` benchmark's cases (random tensors,
the config's model at ``--batch``) with the trunks' pools as they are and with ``nn.MaxPool2d`` put
back, the two models' steps in turn for ``--repeats`` rounds: the medians and the median ratio.
"""
from __future__ import annotations

import argparse
import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..models.backbones import min_input_size, vgg_small_plan
from ..models.maxpool import MaxPool2x2, max_pool_2x2
from .options import FGSYNTH, add_config, add_threads, at_least
from .timing import median_ms, median_ratio, timed_in_turn
from .workload import CASES, build_model, load_bench_config, make_step, random_batch

NAME = "pool"
HELP = "the trunks' 2 x 2 max-pool against F.max_pool2d, alone and in whole steps"
CPU = torch.device("cpu")


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
    fmt = torch.preserve_format
    images, target = random_batch(cfg, args.batch, args.classes, CPU, fmt)
    print(f"steps of {args.config} at batch {args.batch}, ms (medians of {args.repeats} rounds)")
    for case in args.steps:
        models = [build_model(cfg, args.classes, CPU, fmt, False) for _ in range(2)]
        swapped = with_nn_maxpool(models[1])
        steps = [make_step(case, m, cfg, images, target, CPU, None) for m in models]
        times = timed_in_turn(steps, args.repeats, 3, CPU)
        fast, plain = (median_ms(t) for t in times)
        ratio = median_ratio(times[1], times[0])
        print(f"{case:14s} nn.MaxPool2d {plain:7.1f}   MaxPool2x2 {fast:7.1f}   nn.MaxPool2d / MaxPool2x2 {ratio:.3f}"
              f"   ({swapped} pools swapped)", flush=True)


def bench_pools(args):
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
        t = timed_in_turn(steps, args.repeats, 3, CPU)
        times = {name: (t[i], t[len(impls) + i]) for i, name in enumerate(impls)}
        ref_out, ref_grad = results["F.max_pool2d"]
        out, g = results["max_pool_2x2"]
        same = all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in ((out, ref_out), (g, ref_grad)))
        cells = []
        for name in impls:
            fwd, fwd_bwd = (median_ms(t) for t in times[name])
            total[name][0] += fwd
            total[name][1] += fwd_bwd
            cells.append(f"{name} {fwd:6.3f} / {fwd_bwd:6.3f}")
        print(f"{str(list(shape)):18s} forward / forward+backward: {'   '.join(cells)}   bitwise equal: {same}")
    print("all pools          forward / forward+backward: "
          + "   ".join(f"{name} {f:6.3f} / {fb:6.3f}" for name, (f, fb) in total.items()))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=at_least(1), default=32)
    p.add_argument("--width", type=at_least(1), default=16)
    p.add_argument("--size", type=at_least(min_input_size("vgg_small")), default=64,
                   help="input side; each applied pool needs at least a 2 x 2 map")
    add_threads(p, 2)
    p.add_argument("--repeats", type=at_least(1), default=50)
    p.add_argument("--steps", nargs="*", default=[], choices=CASES,
                   help="also time these steps (the steps benchmark's cases) with both pools")
    add_config(p, FGSYNTH, classes=10)


def run(args) -> None:
    # a bad config fails here, in one line, before anything is timed
    cfg = load_bench_config(args.config, args.opts, CPU) if args.steps else None
    torch.manual_seed(0)
    bench_pools(args)
    if args.steps:
        bench_steps(args, cfg)
