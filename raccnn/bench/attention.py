"""Time SASA's two computations of local attention (``raccnn.attention.sasa.local_attention``),
forward + backward, at the shapes of a SASA block, and show which one ``auto`` picks.

    python tools/benchmark.py attention [--shapes 32x128x8 32x64x16 4x64x28] [--heads 4]
        [--kernel-size 7] [--threads 1] [--repeats 10] [--device cpu]

A shape is BATCHxCHANNELSxSIDE (a square map); the small default model's SASA blocks see
32x128x8 (stage 4) and 32x64x16 (stage 3) at batch 32. Median of ``--repeats`` after one warm-up;
the two computations are timed in turn, round by round.
"""
from __future__ import annotations

import argparse

import torch

from ..attention.sasa import SASAConv, auto_local_attention, local_attention
from ..device import resolve_device
from .options import add_device, add_threads, at_least
from .timing import median_ms, timed_in_turn

NAME = "attention"
HELP = "SASA's dense and unfold local attention, and the pick of auto"
IMPLS = ("dense", "unfold")


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        batch, channels, side = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected BATCHxCHANNELSxSIDE, e.g. 32x128x8") from None
    return batch, channels, side


def attention_step(impl, tensors):
    def step():
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        local_attention(*leaves, impl=impl).square().mean().backward()
    return step


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=[(32, 128, 8), (32, 64, 16), (4, 64, 28)])
    p.add_argument("--heads", type=at_least(1), default=4)
    p.add_argument("--kernel-size", type=at_least(1), default=7)
    add_threads(p, 1)
    p.add_argument("--repeats", type=at_least(1), default=10)
    add_device(p, "cpu")


def run(args) -> None:
    device, k = resolve_device(args.device), args.kernel_size
    torch.manual_seed(0)
    layers = []
    for _, channels, _ in args.shapes:
        try:  # the layer's own checks of heads and kernel size, and its relative embeddings
            layers.append(SASAConv(channels, channels, heads=args.heads, kernel_size=k))
        except ValueError as exc:
            raise argparse.ArgumentError(None, str(exc)) from None
    print(f"local attention forward+backward, heads={args.heads}, k={k}, median of {args.repeats}, "
          f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}")
    print("| batch x channels x side | d·k² vs H·W | auto | dense (ms) | unfold (ms) |")
    print("|---|---|---|---:|---:|")
    for (batch, channels, side), layer in zip(args.shapes, layers):
        d = layer.dim
        maps = [torch.randn(batch, channels, side, side).to(device) for _ in range(3)]
        rel = [layer.rel_rows.detach().to(device), layer.rel_cols.detach().to(device)]
        times = timed_in_turn([attention_step(impl, maps + rel) for impl in IMPLS], args.repeats, 1, device)
        dense, unfold = (median_ms(t) for t in times)
        auto = auto_local_attention(side, side, d, k)
        print(f"| {batch}x{channels}x{side} | {d * k * k} vs {side * side} | {auto} | {dense:.1f} | {unfold:.1f} |",
              flush=True)
