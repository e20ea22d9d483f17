"""Insert attention blocks at the end of VGG stages without renaming any trunk parameter.

``replace_convs`` is the other placement, for SASA as its paper uses it: a stage's 3×3
convolutions become attention layers (their ImageNet weights are dropped; the other layers keep
their names and weights).

A VGG ``features`` Sequential is a list of stages, each ending with its last ReLU followed by a
2×2 max-pool (torchvision's VGG-19: ReLUs at indices 3, 8, 17, 26, 35). Stage s's block goes right
after that ReLU: ``features[i]`` becomes ``ReLUThenAttention(relu, block)``, whose block
parameters are ``features.i.attn.*``. The ReLU has no parameters, so every original
``features.N.*`` name is unchanged and ImageNet state dicts still load into the trunk.
"""
from __future__ import annotations

from torch import Tensor, nn

from .create import ATTENTION_TYPES, build_attention
from .sasa import SASAConv


class ReLUThenAttention(nn.Module):
    """y = attn(relu(x)): a trunk's stage-final ReLU followed by an attention block."""

    def __init__(self, relu: nn.Module, attn: nn.Module):
        super().__init__()
        self.relu = relu
        self.attn = attn

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(self.relu(x))


def stage_ends(features: nn.Sequential) -> list[tuple[int, int]]:
    """(index of the stage's last ReLU, its channels) for each stage, i.e. each max-pool."""
    ends, relu_at, channels = [], None, None
    for i, layer in enumerate(features):
        if isinstance(layer, nn.Conv2d):
            channels = layer.out_channels
        elif isinstance(layer, (nn.ReLU, ReLUThenAttention)):
            relu_at = i
        elif isinstance(layer, nn.MaxPool2d):
            if relu_at is None or channels is None:
                raise ValueError(f"features[{i}] is a max-pool with no conv and ReLU before it")
            ends.append((relu_at, channels))
            relu_at = None
    return ends


def insert_attention(trunk: nn.Module, type: str, stages, identity_init: bool = True, **kwargs) -> nn.Module:
    """Insert ``build_attention(type, C, identity_init, **kwargs)`` after the last ReLU of each
    listed stage (1-based) of ``trunk.features``; modifies ``trunk`` in place and returns it."""
    if type not in ATTENTION_TYPES:
        raise ValueError(f"unknown attention type {type!r}; valid types: {', '.join(ATTENTION_TYPES)}")
    stages = sorted({int(s) for s in stages})
    if type == "none" or not stages:
        return trunk
    features = getattr(trunk, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"attention placement supports the VGG trunks (vgg11 ... vgg19_bn, vgg_small); "
                         f"{trunk.__class__.__name__} has no VGG 'features' Sequential")
    ends = stage_ends(features)
    valid = list(range(1, len(ends) + 1))
    bad = [s for s in stages if s not in valid]
    if bad:
        raise ValueError(f"attention stages {bad} do not exist in this trunk; valid stages: {valid}")
    for s in stages:
        index, channels = ends[s - 1]
        if isinstance(features[index], ReLUThenAttention):
            raise ValueError(f"stage {s} already has an attention block")
        block = build_attention(type, channels, identity_init=identity_init, **kwargs)
        features[index] = ReLUThenAttention(features[index], block)
    return trunk


def replace_convs(trunk: nn.Module, stages, **kwargs) -> nn.Module:
    """Replace every 3×3 stride-1 convolution of each listed stage (1-based) of ``trunk.features``
    with ``SASAConv(in, out, **kwargs)`` (``heads``, ``kernel_size``); in place, returns ``trunk``."""
    features = getattr(trunk, "features", None)
    if not isinstance(features, nn.Sequential):
        raise ValueError(f"model.attention.replace_convs supports the VGG trunks (vgg11 ... vgg19_bn, vgg_small); "
                         f"{trunk.__class__.__name__} has no VGG 'features' Sequential")
    stage, convs = 1, {}
    for i, layer in enumerate(features):
        if isinstance(layer, nn.MaxPool2d):
            stage += 1
        elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3) and layer.stride == (1, 1):
            convs.setdefault(stage, []).append(i)
    stages = sorted({int(s) for s in stages})
    bad = [s for s in stages if s not in convs]
    if bad:
        raise ValueError(f"attention stages {bad} do not exist in this trunk; valid stages: {sorted(convs)}")
    for s in stages:
        for i in convs[s]:
            conv = features[i]
            features[i] = SASAConv(conv.in_channels, conv.out_channels, **kwargs)
    return trunk
