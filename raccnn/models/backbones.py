"""Backbones: a convolutional trunk mapping [B, 3, H, W] -> last-conv feature map [B, C, h, w].

- ``vgg11`` ... ``vgg19_bn``: torchvision's VGG ``features`` trunk, kept under the same attribute
  name so torchvision ImageNet state dicts (``features.N.weight``) load unchanged. The trunk
  returns the last conv block's output (conv5_4 for VGG-19: the layer RA-CNN's APN and its
  initialisation read), i.e. ``features`` without its final max-pool, at input side / 16.
- ``vgg_small``: the same layout with few channels, for fast CPU runs (``width`` = first stage).
- ``timm:<name>``: any timm model through ``features_only`` (last stage).

The VGG trunks' 2x2 max-pools are ``maxpool.MaxPool2x2``: ``nn.MaxPool2d``'s values and gradients,
faster on CPU NCHW tensors.

Pretrained weights never come from the network. ``pretrained=True`` reads torchvision's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``), ``pretrained="path.pth"`` reads a local file; when the
file is not there, ``PretrainedWeightsError`` says which file to put where.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.vgg import make_layers

from ..attention.placement import insert_attention, replace_convs
from .maxpool import use_fast_pools

TORCHVISION_VGGS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
BACKBONES = TORCHVISION_VGGS + ("vgg_small",)
TIMM_PREFIX = "timm:"  # any timm model: "timm:<model name>"


class PretrainedWeightsError(FileNotFoundError):
    pass


class VGGTrunk(nn.Module):
    """Holds a VGG ``features`` Sequential; forward returns the last conv block's output.

    The final max-pool stays in ``features`` (it has no parameters, and attention placement finds
    stages by their pools) but is not applied: at a 64-px input it would leave a 4x4 map, too
    coarse to locate a part that covers a few percent of the image.
    """

    def __init__(self, features: nn.Sequential, out_channels: int):
        super().__init__()
        self.features = features
        self.out_channels = out_channels
        self.skip_last = isinstance(features[-1], nn.MaxPool2d)

    def forward(self, x):
        layers = self.features[:-1] if self.skip_last else self.features
        return layers(x)


def vgg_small_plan(width: int = 16):
    w = width
    return [w, "M", 2 * w, "M", 4 * w, 4 * w, "M", 8 * w, 8 * w, "M"]


def check_backbone_name(name: str) -> str | None:
    """Why ``name`` names no backbone, or None when it does."""
    if name in BACKBONES:
        return None
    if name.startswith(TIMM_PREFIX):
        return None if name[len(TIMM_PREFIX):].strip() else f"'{name}' names no timm model (write 'timm:<model name>')"
    close = difflib.get_close_matches(name, BACKBONES, n=1, cutoff=0.6)
    return f"'{name}' is not one of {list(BACKBONES)} nor 'timm:<model name>'" + (f" (did you mean '{close[0]}'?)" if close else "")


def vgg_stage_channels(name: str, width: int = 16) -> list[int]:
    """Channels at the end of each stage (max-pool) of a VGG trunk, where an attention block goes
    (``width``: vgg_small's first stage); [] for timm models."""
    if name in TORCHVISION_VGGS:
        return [64, 128, 256, 512, 512]  # every torchvision VGG
    if name != "vgg_small":
        return []
    plan = vgg_small_plan(width)
    return [plan[i - 1] for i, v in enumerate(plan) if v == "M"]


def vgg_stages(name: str) -> int:
    """Stages (max-pools) of a VGG trunk, where attention blocks can go; 0 for timm models."""
    return len(vgg_stage_channels(name))


def min_input_size(name: str) -> int:
    """The smallest input side that still leaves a 1x1 last-conv map: a VGG trunk applies all its
    max-pools but the last (4 for torchvision's VGGs, 3 for vgg_small); timm models are taken at 32."""
    stages = vgg_stages(name)
    return 2 ** (stages - 1) if stages else 32


def _torchvision_weights_enum(name: str):
    return tvm.get_model_weights(name).IMAGENET1K_V1


def torchvision_cache_file(name: str) -> Path:
    """Where torchvision's hub cache keeps the ImageNet weights of ``name``."""
    url = _torchvision_weights_enum(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_trunk_state(trunk: nn.Module, name: str, pretrained) -> None:
    """Load ImageNet weights into ``trunk`` from the torchvision cache (True) or a file (str)."""
    if pretrained is True:
        path = torchvision_cache_file(name)
        if not path.is_file():
            url = _torchvision_weights_enum(name).url
            raise PretrainedWeightsError(
                f"model.pretrained=true needs torchvision's ImageNet weights for {name!r} at {path} "
                f"(not found, and raccnn never downloads). On a machine with internet, download {url} "
                f"and copy it to that path, or set model.pretrained to the file's path."
            )
    else:
        path = Path(pretrained)
        if not path.is_file():
            raise PretrainedWeightsError(
                f"model.pretrained={str(pretrained)!r}: no such file. Put the ImageNet state dict of "
                f"{name!r} there (a torchvision VGG state dict or one with 'features.N' keys)."
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    trunk_state = {k: v for k, v in state.items() if k.startswith("features.")}
    if not trunk_state:
        raise PretrainedWeightsError(f"{path}: no 'features.*' keys; is this a VGG state dict?")
    missing, _ = trunk.load_state_dict(trunk_state, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing:
        raise PretrainedWeightsError(f"{path}: does not match {name!r}; missing keys {missing[:5]}...")


def build_backbone(name: str = "vgg_small", pretrained=False, width: int = 16, attention=None) -> nn.Module:
    """Build a trunk by name; the returned module has ``out_channels``.

    ``attention`` (``model.attention``: ``type``, ``stages``, ``identity_init``, ``kwargs``) inserts
    attention blocks at the end of VGG stages after the pretrained weights are loaded (see
    ``raccnn.attention.placement``); the trunk's own parameter names do not change. With
    ``replace_convs`` (type ``sasa`` only) the stages' 3×3 convolutions become SASA layers instead.
    """
    trunk = _build_trunk(name, pretrained, width)
    if attention and attention.get("replace_convs"):
        replace_convs(trunk, attention.get("stages", ()), **dict(attention.get("kwargs") or {}))
    elif attention:
        insert_attention(trunk, attention.get("type", "none"), attention.get("stages", ()),
                         attention.get("identity_init", True), **dict(attention.get("kwargs") or {}))
    return trunk


def _build_trunk(name: str, pretrained, width: int) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        return TimmTrunk(name[len(TIMM_PREFIX):], pretrained)
    if name == "vgg_small":
        if pretrained:
            raise PretrainedWeightsError("vgg_small has no ImageNet weights; set model.pretrained=false")
        plan = vgg_small_plan(width)
        return VGGTrunk(use_fast_pools(make_layers(plan, batch_norm=True)), out_channels=plan[-2])
    if name not in TORCHVISION_VGGS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES} or 'timm:<model name>'")
    features = use_fast_pools(getattr(tvm, name)(weights=None).features)
    trunk = VGGTrunk(features, out_channels=512)
    if pretrained:
        load_trunk_state(trunk, name, pretrained)
    return trunk


class TimmTrunk(nn.Module):
    """Last feature map of a timm model created with ``features_only=True``."""

    def __init__(self, model_name: str, pretrained=False):
        super().__init__()
        import timm

        kwargs = {}
        if isinstance(pretrained, str):
            if not Path(pretrained).is_file():
                raise PretrainedWeightsError(f"model.pretrained={pretrained!r}: no such file for timm:{model_name}")
            kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained)}
        elif pretrained:
            raise PretrainedWeightsError(
                f"timm:{model_name}: raccnn never downloads weights; set model.pretrained to a local "
                f"weights file (timm's checkpoint for {model_name})."
            )
        self.body = timm.create_model(
            model_name, pretrained=bool(pretrained), features_only=True, out_indices=(-1,), **kwargs
        )
        self.out_channels = self.body.feature_info.channels()[-1]

    def forward(self, x):
        return self.body(x)[-1]
