"""What DistributedDataParallel costs a phase's step, wrapped per phase (the trainer's way) or once.

    torchrun --standalone --nproc_per_node=2 tools/benchmark.py ddp
        [--config experiments/configs/fgsynth_default.yaml] [--opts KEY=VALUE ...] [--classes 10]
        [--batch 16] [--rounds 30] [--warmup 3] [--cases alternate_cls alternate_apn fusion] [--json out.json]

The phases freeze different parts of the model, so the wrap decides which gradients DDP exchanges.
For each phase step (the ``steps`` benchmark's: random tensors, the phase's freezing, loss and
optimiser; ``--batch`` images per process), three wraps of the same step, each on its own copy of
the model, timed in turn round by round (every step ends with a barrier, so the ranks start each
step together):

- ``none``: no DDP; no gradient is exchanged and the ranks' weights drift apart (the floor);
- ``phase``: the trainer's wrap (``raccnn.engine.distributed.wrap_ddp``), built after the phase
  froze the rest of the model, so DDP hooks only the phase's trainable parameters;
- ``whole``: DDP built once over the whole model while every parameter is trainable, the phase
  frozen afterwards, as a trainer that wrapped the model once would. The frozen parameters then
  never get a gradient, which DDP only accepts with ``find_unused_parameters=True``.

Per line: ms per step (rank 0's median), the median over rounds of the step's time over ``none``'s,
and the bytes all-reduced per step, counted by a DDP communication hook on one step of a separate
copy. Then ``whole`` without ``find_unused_parameters`` is run for two steps and its outcome printed.
Without torchrun it runs as a group of one process (gloo on the CPU, NCCL on CUDA).
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from ..device import resolve_device
from ..engine.distributed import init_distributed, leave_process_group, wrap_ddp
from ..engine.phases import PhaseStep
from .options import FGSYNTH, add_config, add_device, at_least
from .timing import median_ms, median_ratio, timed_in_turn
from .workload import PHASES, build_model, join_group_of_one, load_bench_config, random_batch, tiny_lr

NAME = "ddp"
HELP = "DistributedDataParallel per phase against one wrap of the whole model (under torchrun)"
WRAPS = ("none", "phase", "whole")


def phase_step(case, model, cfg, images, target, device, wrap, count=None, find_unused=True):
    """One optimiser step of phase ``case`` on ``model`` with the gradients exchanged as ``wrap``
    says; ``count``: a one-element list to which every all-reduced bucket adds its bytes."""
    phase = PHASES[case](cfg, 0)
    module = PhaseStep(model, phase)
    if wrap == "whole":  # built while every parameter is trainable; the phase freezes afterwards
        for p in model.parameters():
            p.requires_grad_(True)
        module = wrap_ddp(module, device, find_unused_parameters=find_unused)
    params = phase.freeze(model)
    phase.set_modes(model)
    if wrap == "phase":
        module = wrap_ddp(module, device)
    if count is not None and wrap != "none":
        def counting(state, bucket):
            count[0] += bucket.buffer().numel() * bucket.buffer().element_size()
            return default_hooks.allreduce_hook(state, bucket)
        module.register_comm_hook(None, counting)
    opt = tiny_lr(phase.optimizer(params))

    def step():
        loss, _ = module(images, target, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dist.barrier()
    return step, params


def bytes_per_step(case, base, cfg, images, target, device, wrap) -> int:
    """The bytes ``wrap`` all-reduces in one step of ``case`` on a copy of ``base`` (a DDP
    communication hook counts them; it must be registered before the wrap's first step)."""
    count = [0]
    step, _ = phase_step(case, copy.deepcopy(base), cfg, images, target, device, wrap, count)
    step()
    return count[0]


def strict_whole(case, base, cfg, images, target, device) -> str:
    """What two steps of ``whole`` without ``find_unused_parameters`` do, on a copy of ``base``."""
    step, _ = phase_step(case, copy.deepcopy(base), cfg, images, target, device, "whole", find_unused=False)
    try:
        step()
        step()
    except RuntimeError as exc:
        return "fails: " + str(exc).strip().split(". ")[0]
    return "runs"


def bench(cfg, args, device, world):
    rows = []
    main = world.rank == 0
    for case in args.cases:
        torch.manual_seed(1 + world.rank)  # each rank its own batch, as each draws its own shard
        images, target = random_batch(cfg, args.batch, args.classes, device, torch.preserve_format)
        base = build_model(cfg, args.classes, device, torch.preserve_format, False)
        steps = []
        for wrap in WRAPS:
            step, params = phase_step(case, copy.deepcopy(base), cfg, images, target, device, wrap)
            steps.append(step)
        trainable = sum(p.numel() for p in params)  # the phase's, the same in every wrap
        times = timed_in_turn(steps, args.rounds, args.warmup, device)
        total = sum(p.numel() for p in base.parameters())
        for k, wrap in enumerate(WRAPS):
            sent = bytes_per_step(case, base, cfg, images, target, device, wrap) if wrap != "none" else 0
            row = dict(case=case, wrap=wrap, processes=world.size, batch=args.batch, rounds=args.rounds,
                       ms_per_step=median_ms(times[k]), ratio_to_none=median_ratio(times[k], times[0]),
                       allreduced_bytes=sent, trainable_params=trainable, model_params=total)
            rows.append(row)
            if main:
                print(f"{case:14s} {wrap:6s} {row['ms_per_step']:8.1f} ms  x{row['ratio_to_none']:.3f} of none  "
                      f"{sent / 2**20:7.2f} MiB all-reduced per step  (trainable {trainable:,} of {total:,} "
                      f"parameters)", flush=True)
        outcome = strict_whole(case, base, cfg, images, target, device)
        rows.append(dict(case=case, wrap="whole_strict", processes=world.size, outcome=outcome))
        if main:
            print(f"{case:14s} whole without find_unused_parameters: {outcome}", flush=True)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p, FGSYNTH, classes=10)
    add_device(p, "auto")
    p.add_argument("--batch", type=at_least(1), default=16, help="images per process")
    p.add_argument("--cases", nargs="+", default=list(PHASES), choices=list(PHASES))
    p.add_argument("--rounds", type=at_least(1), default=30)
    p.add_argument("--warmup", type=at_least(0), default=3)
    p.add_argument("--json", default=None)


def run(args) -> dict | None:
    """Time the three wraps on every process of the group; rank 0's JSON document (None on the others)."""
    device = resolve_device(args.device)
    cfg = load_bench_config(args.config, args.opts, device)
    world = init_distributed(args.device)  # torchrun's group; a group of one under plain python
    join_group_of_one(device)
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    if world.rank == 0:
        print(f"{args.config} {' '.join(args.opts)}: {world.size} process(es), "
              f"{torch.get_num_threads()} thread(s) each, batch {args.batch} per process, {args.rounds} rounds",
              flush=True)
    rows = bench(cfg, args, device, world)
    leave_process_group()
    if world.rank != 0:
        return None
    return {"config": args.config, "opts": args.opts, "processes": world.size,
            "threads": torch.get_num_threads(), "rows": rows}
