"""Time attention_crop (forward + backward) against a per-image Python loop.

    python tools/benchmark.py crop [--sizes 448 224] [--batches 4 16 64] [--threads 2] [--repeats 5]
        [--device cpu]

The loop baseline applies the same formulas one image at a time, as the public RA-CNN ports do, so
the difference is batching alone. Medians of ``--repeats`` rounds after one warm-up round, the two
timed in turn round by round.
"""
from __future__ import annotations

import argparse

import torch

from ..device import resolve_device
from ..models import attention_crop
from ..models.crop import box_mask, sampling_grid
from .options import add_device, add_threads, at_least
from .timing import median_ms, timed_in_turn

NAME = "crop"
HELP = "the batched attention crop against a per-image loop"


def per_image_loop(images, boxes, out_size, k=10.0):
    outs = []
    for b in range(images.shape[0]):
        img, box = images[b : b + 1], boxes[b : b + 1]
        masked = img * box_mask(box, img.shape[-2], img.shape[-1], k)
        grid = sampling_grid(box.detach(), out_size, out_size)
        outs.append(torch.nn.functional.grid_sample(masked, grid, align_corners=False))
    return torch.cat(outs)


def crop_step(fn, images, boxes, out_size):
    def step():
        # as in RA-CNN training: the boxes need gradient, the input images do not
        b = boxes.clone().requires_grad_(True)
        fn(images, b, out_size).square().mean().backward()
    return step


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=at_least(1), nargs=2, default=[448, 224], metavar=("IN", "OUT"))
    p.add_argument("--batches", type=at_least(1), nargs="+", default=[4, 16, 64])
    add_threads(p, 2)
    p.add_argument("--repeats", type=at_least(1), default=5)
    add_device(p, "cpu")


def run(args) -> None:
    device = resolve_device(args.device)
    size_in, size_out = args.sizes
    print(f"crop {size_in}->{size_out}, forward+backward, median of {args.repeats}, device={device}, "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}")
    print("| batch | batched (ms) | per-image loop (ms) | speed-up |")
    print("|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for batch in args.batches:
        images = torch.rand(batch, 3, size_in, size_in, generator=gen).to(device)
        boxes = torch.rand(batch, 3, generator=gen) * torch.tensor([0.4, 0.4, 0.2]) + torch.tensor([0.3, 0.3, 0.1])
        boxes = boxes.to(device)
        steps = [crop_step(fn, images, boxes, size_out) for fn in (attention_crop, per_image_loop)]
        fast, slow = (median_ms(t) for t in timed_in_turn(steps, args.repeats, 1, device))
        print(f"| {batch} | {fast:.1f} | {slow:.1f} | {slow / fast:.2f}x |", flush=True)
