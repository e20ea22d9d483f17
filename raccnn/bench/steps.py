"""Throughput of a config's training steps and data loading, on random tensors (no dataset needed).

    python tools/benchmark.py [steps] [--config experiments/configs/cub200_vgg19.yaml] [--opts KEY=VALUE ...]
        [--batch 16 32] [--amp none bf16] [--channels-last false true] [--compile false]
        [--cases alternate_cls alternate_apn fusion eval plain_cls plain_apn] [--steps 20] [--warmup 5]
        [--peak-tflops 989] [--loader-workers 8 16] [--loader-images 512] [--loader-output float uint8]
        [--device cuda] [--overhead]
        [--ddp false true] [--json out.json]

One line per case (phase step x batch x amp x channels_last x compile) with: images/s, ms per step
(median of ``--steps`` after ``--warmup``), peak memory, model FLOPs per image (counted by
``torch.utils.flop_counter`` over one step: forward, backward), achieved TFLOP/s, MFU against
``--peak-tflops`` (default 989, the dense bf16 spec of the H100/H200, on CUDA; none on the CPU), and
the crop's share of the step (the crops of one step, forward and, where the step differentiates
them, backward, timed alone at the same shapes, divided by the step time; both ``model.crop.impl``
implementations are timed, the share is the config's). ``--ddp true`` wraps the phase steps in
DistributedDataParallel over a one-process group, as the trainer does under torchrun. Cases:

- ``alternate_cls`` / ``alternate_apn`` / ``fusion``: one optimiser step of that phase, with the
  phase's own freezing, loss and optimiser (``raccnn/engine/phases.py``).
- ``eval``: the forward pass of all scales under ``no_grad``.
- ``plain_cls``: the three scale networks trained on their own input sizes, one after the other,
  with ``alternate_cls``'s optimiser, nothing else (no APN, crop or rank loss); ``alternate_cls`` /
  ``plain_cls`` is RA-CNN's overhead.
- ``plain_apn``: with frozen weights, scale 1's forward and the other scales' forward and backward
  to their inputs: ``alternate_apn``'s network work without the APNs, crops and rank loss.

``--overhead`` adds RA-CNN's overhead ratios, ``alternate_cls`` / ``plain_cls`` and ``alternate_apn`` /
``plain_apn``, from the two steps of each pair timed in turn, round by round: the median of the
rounds' ratios, which drift in the machine's speed (other work on a shared CPU) does not bias.

Then the data loader's images/s for the config's training transforms on generated JPEGs of CUB's
size (about 500 x 375, ``raccnn/data/standin.py``) with each ``--loader-workers``, so one sees at
once whether the data or the model bounds an epoch: up to the model's float input on ``--device``,
for each ``--loader-output`` (``float``: normalised per image in the workers; ``uint8``: left uint8
there and converted per batch on the device, the datasets' way), after the images/s of one process
doing a worker's whole work per image (read, decode, transforms, collate; no conversion, no hand-over
between processes), for each output: what every worker adds where cores are many and the conversion
runs on a GPU. A table on stdout; ``--json`` writes the rows.
"""
from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import tempfile

import torch
import torch._dynamo
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from ..data.collate import collate_samples
from ..data.cub import CUBDataset
from ..data.standin import write_cub_standin
from ..data.device_input import to_model_input
from ..data.transforms import TRANSFORM_OUTPUTS, build_transforms
from ..device import resolve_device
from ..engine.distributed import leave_process_group
from ..engine.precision import AMP_DTYPES, set_cudnn_benchmark
from ..models.backbones import input_normalization
from ..models.crop import resolve_impl
from .options import add_config, add_device, add_threads, at_least, parse_bool
from .timing import median_ms, median_ratio, run_once, timed, timed_in_turn
from .workload import CASES, PHASES, build_model, join_group_of_one, load_bench_config, make_step, random_batch

NAME = "steps"
HELP = "training steps, evaluation and data loading of a config (the default)"


def crop_step(model, images, case, device, impl):
    """The crops of one step of ``case`` through the crop implementation ``impl`` (None when the
    case has no crop)."""
    if case not in ("alternate_cls", "alternate_apn", "fusion", "eval"):
        return None
    boxes = torch.tensor([[0.5, 0.5, 0.3]], device=device).repeat(len(images), 1)
    backward = case == "alternate_apn"

    def step():
        b = boxes.clone().requires_grad_(backward)
        outs = [model.crop(images, b, size, impl=impl) for size in model.input_sizes[1:]]
        if backward:
            sum(o.float().square().mean() for o in outs).backward()
    return step


def settings(args):
    """Every (batch, amp, channels_last, compile) the options ask for, with its memory format."""
    for batch, amp, cl, comp in itertools.product(args.batch, args.amp, args.channels_last, args.compile):
        yield batch, amp, cl, comp, torch.channels_last if cl else torch.preserve_format


def bench_overhead(cfg, args, device):
    """RA-CNN's overhead, ``alternate_cls`` / ``plain_cls`` and ``alternate_apn`` / ``plain_apn``, with
    the two steps of a pair timed in alternation (their order swapped every round), so that drift in
    the machine's speed between runs cancels in each round's ratio; the median over rounds."""
    rows = []
    for batch, amp, cl, comp, fmt in settings(args):
        torch.manual_seed(0)
        images, target = random_batch(cfg, batch, args.classes, device, fmt)
        for plain, full in (("plain_cls", "alternate_cls"), ("plain_apn", "alternate_apn")):
            # one model each: the cases freeze different parameters
            steps = [make_step(case, build_model(cfg, args.classes, device, fmt, comp), cfg, images, target, device,
                               AMP_DTYPES[amp]) for case in (plain, full)]
            times = timed_in_turn(steps, args.steps, args.warmup, device)
            row = dict(case=f"overhead_{full.split('_')[1]}", batch=batch, amp=amp, channels_last=cl, compile=comp,
                       rounds=args.steps, plain_ms=median_ms(times[0]), alternate_ms=median_ms(times[1]),
                       ratio=median_ratio(times[1], times[0]))
            add_row(rows, row, f"{full} / {plain}  b{batch:<4d} {amp:5s} cl={int(cl)} compile={int(comp)}  ratio "
                    f"{row['ratio']:.3f} (median of {args.steps} interleaved rounds; medians {row['alternate_ms']:.1f} / "
                    f"{row['plain_ms']:.1f} ms)")
    return rows


def add_row(rows: list, row: dict, line: str) -> None:
    """Keep a measured row and print its line at once (a long run shows its progress)."""
    rows.append(row)
    print(line, flush=True)


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def bench_model(cfg, args, device):
    rows = []
    num_classes = args.classes
    for (batch, amp, cl, comp, fmt), ddp in itertools.product(settings(args), args.ddp):
        model = build_model(cfg, num_classes, device, fmt, comp)
        images, target = random_batch(cfg, batch, num_classes, device, fmt)
        for case in args.cases:
            if ddp and case not in PHASES:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            step = make_step(case, model, cfg, images, target, device, AMP_DTYPES[amp], ddp)
            try:
                first = run_once(step, device)  # the first call compiles when compile is on
            except torch.OutOfMemoryError:
                rows.append(dict(case=case, batch=batch, amp=amp, channels_last=cl, compile=comp, ddp=ddp,
                                 error="out of memory"))
                del step
                torch.cuda.empty_cache()
                continue
            sec = timed(step, args.steps, args.warmup, device)
            flops = count_flops(step) / batch
            crop_ms = {}  # both implementations of the same crops, alone
            for impl in ("gather", "grid_sample"):
                crop = crop_step(model, images, case, device, impl)
                if crop:
                    crop_ms[impl] = 1000 * timed(crop, args.steps, args.warmup, device)
            used = resolve_impl(model.crop_impl, device)
            row = dict(case=case, batch=batch, amp=amp, channels_last=cl, compile=comp, ddp=ddp,
                       images_per_s=batch / sec, ms_per_step=1000 * sec, first_step_s=first,
                       peak_memory_mib=peak_memory_mib(device), gflop_per_image=flops / 1e9,
                       tflops=flops * batch / sec / 1e12, crop_impl=used, crop_compile=model.crop_compile,
                       crop_share=crop_ms.get(used, 0.0) / 1000 / sec, crop_ms=crop_ms)
            row["mfu"] = row["tflops"] / args.peak_tflops if args.peak_tflops else None
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


def bench_loader(cfg, args, device):
    """images/s of the training loader with each ``--loader-workers`` and ``--loader-output``, up to the
    model's float input on ``device``: ``float`` normalises each image in the workers (the transforms
    end in ToDtype and Normalize), ``uint8`` leaves them uint8 and converts each batch on ``device``
    (``to_model_input``) inside the timed loop. The outputs' epochs run in turn, ``--loader-rounds``
    times, their order reversed every other round: medians, and the median of the rounds' speed-ups."""
    rows = []
    if not args.loader_workers:  # --loader-workers with no value: no loader lines, no JPEGs written
        return rows
    d = cfg["data"]
    normalization = mean, std = input_normalization(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        per_class = max(2, args.loader_images)  # half of them train: 2 classes x half = loader_images
        write_cub_standin(tmp, classes=2, images_per_class=per_class)
        datasets = [CUBDataset(tmp, split="trainval", val_fraction=0.1,
                               transform=build_transforms(True, d["resize"], d["crop"], flip=d["flip"], mean=mean,
                                                          std=std, output=output))
                    for output in args.loader_output]
        rows += bench_worker(datasets, args)
        for workers in args.loader_workers:
            epochs, counts = [], []
            for output, ds in zip(args.loader_output, datasets):
                loader = DataLoader(ds, batch_size=max(args.batch), shuffle=True, num_workers=workers,
                                    drop_last=False, pin_memory=device.type == "cuda", collate_fn=collate_samples)
                for _ in loader:  # warm-up: worker start, page cache
                    break
                counts.append([])

                def epoch(loader=loader, counted=counts[-1]):
                    counted.append(sum(len(to_model_input(b["image"], device, normalization, non_blocking=True))
                                       for b in loader))
                epochs.append(epoch)
            times = timed_in_turn(epochs, args.loader_rounds, 0, device)
            for k, output in enumerate(args.loader_output):
                n = counts[k][0]
                row = dict(case="loader", workers=workers, output=output, images=n, rounds=args.loader_rounds,
                           images_per_s=n / statistics.median(times[k]), input_size=d["crop"])
                gain = speedup_vs_float(row, times, args.loader_output)
                add_row(rows, row, f"loader  workers {workers:3d}  {output:5s} {row['images_per_s']:9.1f} images/s  "
                        f"({n} JPEGs ~500x375 -> {d['resize']}/{d['crop']} px, training transforms, to the "
                        f"{device.type} input{gain})")
    return rows


def speedup_vs_float(row: dict, times, outputs) -> str:
    """For a ``uint8`` row timed in turn with a ``float`` one: the median per-round speed-up, kept in
    ``row`` and returned as the line's suffix."""
    if row["output"] != "uint8" or "float" not in outputs:
        return ""
    row["speedup_vs_float"] = median_ratio(times[outputs.index("float")], times[outputs.index("uint8")])
    return f", {row['speedup_vs_float']:.2f}x float"


def bench_worker(datasets, args) -> list:
    """images/s of one process doing a worker's whole work for each ``--loader-output``: read, decode,
    transform and collate the batches of an epoch on one thread, as a DataLoader worker does, nothing
    after (no conversion, no hand-over). This is what each worker adds to a loader when the cores are
    many and the conversion runs on a GPU; the ``loader`` rows below also carry the main process and
    the hand-over between processes."""
    rows, epochs, counts = [], [], []
    for ds in datasets:
        loader = DataLoader(ds, batch_size=max(args.batch), shuffle=True, num_workers=0, collate_fn=collate_samples)
        counts.append([])

        def epoch(loader=loader, counted=counts[-1]):
            counted.append(sum(len(b["image"]) for b in loader))
        epochs.append(epoch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    try:
        times = timed_in_turn(epochs, args.loader_rounds, 1, None)  # one warm-up epoch: the page cache
    finally:
        torch.set_num_threads(threads)
    for k, output in enumerate(args.loader_output):
        n = counts[k][-1]
        row = dict(case="loader_worker", output=output, images=n, rounds=args.loader_rounds,
                   batch=max(args.batch), images_per_s=n / statistics.median(times[k]),
                   ms_per_image=1000 * statistics.median(times[k]) / n)
        gain = speedup_vs_float(row, times, args.loader_output)
        add_row(rows, row, f"loader  per worker  {output:5s} {row['images_per_s']:9.1f} images/s  "
                f"({row['ms_per_image']:.2f} ms an image: read, decode, transforms, collate in one process{gain})")
    return rows


def setting_text(r) -> str:
    return (f"{r['case']:14s} b{r['batch']:<4d} {r['amp']:5s} cl={int(r['channels_last'])} compile={int(r['compile'])} "
            f"ddp={int(r['ddp'])}")


def format_row(r) -> str:
    if "error" in r:
        return f"{setting_text(r)}  {r['error']}"
    mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "   - "
    crops = " ".join(f"{impl} {ms:.2f} ms" for impl, ms in r["crop_ms"].items())
    return (f"{setting_text(r)} {r['images_per_s']:9.1f} img/s {r['ms_per_step']:9.1f} ms "
            f"{r['peak_memory_mib']:8.0f} MiB {r['gflop_per_image']:8.4g} GFLOP/img {r['tflops']:8.4g} TFLOP/s MFU {mfu} "
            f"crop {100 * r['crop_share']:5.1f}%" + (f" ({crops})" if crops else ""))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, "experiments/configs/cub200_vgg19.yaml", classes=200)
    add_device(p, "auto")
    p.add_argument("--batch", type=at_least(1), nargs="+", default=[16])
    p.add_argument("--amp", nargs="+", default=None, choices=list(AMP_DTYPES), help="default: bf16 on CUDA, none on the CPU")
    p.add_argument("--channels-last", type=parse_bool, nargs="+", default=None, help="default: true on CUDA")
    p.add_argument("--compile", type=parse_bool, nargs="+", default=[False])
    p.add_argument("--ddp", type=parse_bool, nargs="+", default=[False], help="the phase steps also (or only) wrapped in "
                   "DistributedDataParallel over a one-process group, as under torchrun (its overhead)")
    p.add_argument("--cases", nargs="+", default=list(CASES[:4]), choices=CASES)
    p.add_argument("--steps", type=at_least(1), default=20)
    p.add_argument("--warmup", type=at_least(0), default=5)
    p.add_argument("--peak-tflops", type=float, default=None, help="default: 989 on CUDA (H100/H200 dense bf16)")
    p.add_argument("--loader-workers", type=at_least(0), nargs="*", default=None, help="default: the config's num_workers")
    p.add_argument("--loader-images", type=at_least(1), default=256)
    p.add_argument("--loader-rounds", type=at_least(1), default=1, help="epochs of each --loader-output, in turn")
    p.add_argument("--loader-output", nargs="+", default=["float", "uint8"], choices=TRANSFORM_OUTPUTS,
                   help="what the workers hand over: float (normalised per image) or uint8 (converted per batch "
                   "on --device); default: both, side by side")
    add_threads(p, None)
    p.add_argument("--overhead", action="store_true", help="also time alternate_cls/plain_cls and "
                   "alternate_apn/plain_apn interleaved, round by round (RA-CNN's overhead ratios)")
    p.add_argument("--json", default=None)


def run(args) -> dict:
    """Time the steps the options ask for; the JSON document of the run (its settings and rows)."""
    device = resolve_device(args.device)
    cfg = load_bench_config(args.config, args.opts, device, compile=any(args.compile))
    cuda = device.type == "cuda"
    if any(args.compile):  # a graph that hits Dynamo's recompile limit stops the run instead of going eager
        torch._dynamo.config.fail_on_recompile_limit_hit = True
    cudnn = set_cudnn_benchmark(cfg["train"]["cudnn_benchmark"], device, cfg["deterministic"])
    if any(args.ddp):
        join_group_of_one(device)
    args.amp = args.amp or (["bf16"] if cuda else ["none"])
    args.channels_last = args.channels_last if args.channels_last is not None else [cuda]
    args.peak_tflops = args.peak_tflops or (989.0 if cuda else None)
    args.loader_workers = args.loader_workers if args.loader_workers is not None else [cfg["data"]["num_workers"]]
    name = torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{args.config} {' '.join(args.opts)} on {name}, torch {torch.__version__}, input "
          f"{cfg['model']['input_sizes']}, {cfg['model']['backbone']}, cudnn.benchmark {cudnn}", flush=True)
    rows = bench_model(cfg, args, device) + (bench_overhead(cfg, args, device) if args.overhead else [])
    rows += bench_loader(cfg, args, device)
    leave_process_group()
    return {"config": args.config, "opts": args.opts, "device": name, "torch": torch.__version__,
            "peak_tflops": args.peak_tflops, "cudnn_benchmark": cudnn, "rows": rows}
