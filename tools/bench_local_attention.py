"""Time SASA's two computations of local attention (``raccnn.attention.sasa.local_attention``),
forward + backward, at the shapes of a SASA block, and show which one ``auto`` picks.

    python tools/bench_local_attention.py [--shapes 32x128x8 32x64x16 4x64x28] [--heads 4]
        [--kernel-size 7] [--threads 1] [--repeats 10] [--device cpu]

A shape is BATCHxCHANNELSxSIDE (a square map); the small default model's SASA blocks see
32x128x8 (stage 4) and 32x64x16 (stage 3) at batch 32. Median of ``--repeats`` after one warm-up;
the two computations are timed in turn, round by round.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from raccnn.attention.sasa import SASAConv, auto_local_attention, local_attention


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        batch, channels, side = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected BATCHxCHANNELSxSIDE, e.g. 32x128x8") from None
    return batch, channels, side


def step_fn(impl, tensors, device):
    def step():
        leaves = [t.detach().requires_grad_(True) for t in tensors]
        local_attention(*leaves, impl=impl).square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=parse_shape, nargs="+", default=[(32, 128, 8), (32, 64, 16), (4, 64, 28)])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kernel-size", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, k = torch.device(args.device), args.kernel_size
    print(f"local attention forward+backward, heads={args.heads}, k={k}, median of {args.repeats}, "
          f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}")
    print("| batch x channels x side | d·k² vs H·W | auto | dense (ms) | unfold (ms) |")
    print("|---|---|---|---:|---:|")
    torch.manual_seed(0)
    for batch, channels, side in args.shapes:
        try:  # the layer's own checks of heads and kernel size, and its relative embeddings
            layer = SASAConv(channels, channels, heads=args.heads, kernel_size=k)
        except ValueError as exc:
            p.error(str(exc))
        d = layer.dim
        maps = [torch.randn(batch, channels, side, side).to(device) for _ in range(3)]
        rel = [layer.rel_rows.detach().to(device), layer.rel_cols.detach().to(device)]
        steps = {impl: step_fn(impl, maps + rel, device) for impl in ("dense", "unfold")}
        times = {impl: [] for impl in steps}
        for impl, step in steps.items():
            step()  # warm-up
        for _ in range(args.repeats):
            for impl, step in steps.items():
                t = time.perf_counter()
                step()
                times[impl].append(time.perf_counter() - t)
        auto = auto_local_attention(side, side, d, k)
        ms = {impl: statistics.median(ts) * 1e3 for impl, ts in times.items()}
        print(f"| {batch}x{channels}x{side} | {d * k * k} vs {side * side} | {auto} | {ms['dense']:.1f} | {ms['unfold']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
