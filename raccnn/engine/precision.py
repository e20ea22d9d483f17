"""Numeric precision and memory layout of training: autocast, the fp16 loss scaler, channels_last.

``train.amp``: ``auto`` (bf16 on CUDA, none on the CPU), ``bf16``, ``fp16`` (with
``torch.amp.GradScaler``) or ``none``. Under autocast the convolutions and matrix products run in
16 bits; what must stay exact stays in fp32: the crop's box arithmetic and sampling grid
(``models/crop.py`` promotes), the softmax of the rank loss and every cross-entropy
(``losses.py`` and the phases call ``.float()`` on the logits first).
``train.channels_last``: ``auto`` (on CUDA only), true or false: the model and its inputs in NHWC,
which tensor-core convolutions prefer.
``train.cudnn_benchmark``: ``auto`` (on CUDA unless ``deterministic``), true or false: cuDNN times
its convolution algorithms at each new input shape and keeps the fastest (the shapes of a run are
fixed, so this happens once per shape).
``train.compile`` and ``model.crop.compile``: ``torch.compile`` of the scale networks and of the crop;
both build code with a C/C++ compiler, so ``check_compiler`` asks for one before anything runs.
"""
from __future__ import annotations

import contextlib
import os
import shutil

import torch

from ..errors import ConfigError
from ..train_options import AMP_MODES

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: full precision)."""
    if mode == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AMP_DTYPES[mode]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def use_channels_last(setting, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def set_cudnn_benchmark(setting, device: torch.device, deterministic: bool) -> bool:
    """Apply ``train.cudnn_benchmark``; returns whether it is on."""
    on = (device.type == "cuda" and not deterministic) if setting == "auto" else bool(setting)
    torch.backends.cudnn.benchmark = on
    return on


def grad_scaler(dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def check_compiler(cfg: dict, device: torch.device) -> None:
    """Refuse ``train.compile`` / ``model.crop.compile`` when no C/C++ compiler is on PATH: inductor
    builds its CPU kernels with one and Triton its GPU kernels' launchers, and without it the run
    would fail at the first compiled call, deep inside the first phase."""
    keys = [key for key, on in (("train.compile", cfg["train"]["compile"]),
                                ("model.crop.compile", cfg["model"]["crop"]["compile"])) if on]
    if not keys:
        return
    candidates = [os.environ.get("CXX"), os.environ.get("CC"), "g++", "gcc", "clang++", "clang", "c++", "cc"]
    if not any(c and shutil.which(c) for c in candidates):
        raise ConfigError(f"{', '.join(keys)}: torch.compile needs a C/C++ compiler (g++ or clang++, or $CXX) on "
                          f"PATH to build its {device.type.upper()} kernels; install one or set {keys[0]}=false")


def place_model(model: torch.nn.Module, cfg: dict, device: torch.device, channels_last: bool,
                distributed: bool) -> torch.nn.Module:
    """The model on ``device`` as the config asks: BatchNorm synchronised across processes
    (``model.sync_bn`` under torchrun), channels_last, each scale network compiled in place (so
    parameter names, state dicts and checkpoints stay the same)."""
    if cfg["model"]["sync_bn"] and distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if cfg["train"]["compile"]:
        for net in model.scales:
            net.compile()
    return model
