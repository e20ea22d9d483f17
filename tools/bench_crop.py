"""Benchmark attention_crop (forward + backward) against a per-image Python loop.

    python tools/bench_crop.py [--sizes 448 224] [--batches 4 16 64] [--threads 2] [--device cpu]

The loop baseline applies the same formulas one image at a time, as the public RA-CNN ports do, so
the difference is batching alone.
"""
from __future__ import annotations

import argparse
import time

import torch

from raccnn.models import attention_crop
from raccnn.models.crop import box_mask, sampling_grid


def per_image_loop(images, boxes, out_size, k=10.0):
    outs = []
    for b in range(images.shape[0]):
        img, box = images[b : b + 1], boxes[b : b + 1]
        masked = img * box_mask(box, img.shape[-2], img.shape[-1], k)
        grid = sampling_grid(box.detach(), out_size, out_size)
        outs.append(torch.nn.functional.grid_sample(masked, grid, align_corners=False))
    return torch.cat(outs)


def time_fn(fn, images, boxes, out_size, repeats, device):
    def step():
        # as in RA-CNN training: the boxes need gradient, the input images do not
        b = boxes.clone().requires_grad_(True)
        fn(images, b, out_size).square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs=2, default=[448, 224], metavar=("IN", "OUT"))
    p.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size_in, size_out = args.sizes
    print(f"crop {size_in}->{size_out}, forward+backward, median of {args.repeats}, device={device}, "
          f"threads={torch.get_num_threads()}, torch {torch.__version__}")
    print("| batch | batched (ms) | per-image loop (ms) | speed-up |")
    print("|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for batch in args.batches:
        images = torch.rand(batch, 3, size_in, size_in, generator=gen).to(device)
        boxes = (torch.rand(batch, 3, generator=gen) * torch.tensor([0.4, 0.4, 0.2]) + torch.tensor([0.3, 0.3, 0.1])).to(device)
        fast = time_fn(lambda x, b, o: attention_crop(x, b, o), images, boxes, size_out, args.repeats, device)
        slow = time_fn(per_image_loop, images, boxes, size_out, args.repeats, device)
        print(f"| {batch} | {fast * 1e3:.1f} | {slow * 1e3:.1f} | {slow / fast:.2f}x |")


if __name__ == "__main__":
    main()
