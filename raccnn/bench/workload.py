"""What the model benchmarks time: a config's RA-CNN on random tensors and one step of each
case (``CASES``; what each case runs is listed in ``raccnn/bench/steps.py``).
"""
from __future__ import annotations

import torch
import torch._dynamo
import torch.distributed as dist

from ..config import load_config
from ..engine.distributed import wrap_ddp
from ..engine.phases import AlternateAPN, AlternateCls, Fusion
from ..engine.precision import autocast, check_compiler
from ..engine.phases import PhaseStep
from ..errors import ConfigError
from ..models.racnn import build_racnn

PHASES = {"alternate_cls": AlternateCls, "alternate_apn": AlternateAPN, "fusion": Fusion}
CASES = ("alternate_cls", "alternate_apn", "fusion", "eval", "plain_cls", "plain_apn")


def load_bench_config(path, opts, device, compile=False) -> dict:
    """The config to time, checked before anything is built (``ConfigError`` otherwise)."""
    cfg = load_config(path, opts)
    if cfg["model"]["proposer"] == "oracle":
        raise ConfigError("model.proposer: the oracle zooms on annotated part boxes, which the benchmark's "
                          "random tensors do not have (time it with model.proposer=apn)")
    check_compiler(dict(cfg, train=dict(cfg["train"], compile=compile)), device)
    return cfg


def build_model(cfg, num_classes, device, fmt, compile):
    """A randomly initialised RA-CNN (seed 0) on ``device`` in memory format ``fmt``, its scale
    networks compiled in place when ``compile``."""
    torch.manual_seed(0)
    model = build_racnn(dict(cfg, model=dict(cfg["model"], pretrained=False)), num_classes)
    model.to(device, memory_format=fmt)
    if compile:
        # Dynamo's recompile limit counts per code object, over every model of the process: without
        # a reset, the cases after the first few models ran eager while reported as compiled.
        torch._dynamo.reset()
        for net in model.scales:
            net.compile()
    return model


def random_batch(cfg, batch, num_classes, device, fmt):
    """Random images at the config's crop size and random labels."""
    size = cfg["data"]["crop"]
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    return images, torch.randint(0, num_classes, (batch,), device=device)


def tiny_lr(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The phase's optimiser (its cost per step) at a learning rate that keeps random-data steps finite."""
    for group in opt.param_groups:
        group["lr"] = 1e-6
    return opt


def make_step(case, model, cfg, images, target, device, dtype, ddp=False):
    """A closure running one step of ``case``; ``ddp``: a phase's step wrapped in
    DistributedDataParallel as the trainer wraps it under torchrun (needs a process group)."""
    if case in PHASES:
        phase = PHASES[case](cfg, 0)
        params = phase.freeze(model)
        phase.set_modes(model)
        opt = tiny_lr(phase.optimizer(params))
        module = PhaseStep(model, phase)
        if ddp:
            module = wrap_ddp(module, device)

        def step():
            with autocast(device, dtype):
                loss, _ = module(images, target, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    if case == "eval":
        model.eval()

        def step():
            with torch.no_grad(), autocast(device, dtype):
                model(images)
        return step
    inputs = [torch.randn(len(images), 3, s, s, device=device) for s in model.input_sizes]
    if case == "plain_cls":
        for p in model.parameters():
            p.requires_grad_(True)
        model.train()
        opt = tiny_lr(AlternateCls(cfg, 0).optimizer(list(model.scales.parameters())))  # alternate_cls's

        def step():
            opt.zero_grad(set_to_none=True)
            for net, x in zip(model.scales, inputs):
                with autocast(device, dtype):
                    loss = torch.nn.functional.cross_entropy(net(x)[0].float(), target)
                loss.backward()
            opt.step()
        return step
    for p in model.parameters():  # plain_apn: frozen weights; scale 1 forward, scales 2.. back to their inputs
        p.requires_grad_(False)
    model.eval()
    for x in inputs[1:]:
        x.requires_grad_(True)

    def step():
        with torch.no_grad(), autocast(device, dtype):
            model.scales[0](inputs[0])
        for net, x in zip(model.scales[1:], inputs[1:]):
            with autocast(device, dtype):
                out = net(x)[0].float().softmax(1)[:, 0].mean()
            out.backward()
            x.grad = None
    return step


def join_group_of_one(device: torch.device) -> None:
    """A process group of this process alone (NCCL on CUDA, gloo on the CPU), which
    DistributedDataParallel needs outside torchrun; nothing when a group is already joined. Its store
    lives in this process (no port: benchmarks run side by side do not meet)."""
    if dist.is_initialized():
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
