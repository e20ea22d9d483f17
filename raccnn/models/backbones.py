"""Backbones: a convolutional trunk mapping [B, 3, H, W] -> last-conv feature map [B, C, h, w].

- ``vgg11`` ... ``vgg19_bn``: torchvision's VGG ``features`` trunk, kept under the same attribute
  name so torchvision ImageNet state dicts (``features.N.weight``) load unchanged. The trunk
  returns the last conv block's output (conv5_4 for VGG-19: the layer RA-CNN's APN and its
  initialisation read), i.e. ``features`` without its final max-pool, at input side / 16.
- ``vgg_small``: the same layout with few channels, for fast CPU runs (``width`` = first stage).
- ``timm:<name>``: a timm model's last feature map, NCHW, through timm's ``forward_intermediates``
  (convnets such as ResNet and ConvNeXt, and transformers: Swin's channels-last maps are made NCHW,
  ViT's patch tokens become a grid without the class and register tokens; the model's final norm is
  applied, as its own classifier sees it). See ``TimmTrunk`` for the input sizes.

The VGG trunks' 2x2 max-pools are ``maxpool.MaxPool2x2``: ``nn.MaxPool2d``'s values and gradients,
faster on CPU NCHW tensors.

Pretrained weights never come from the network. ``pretrained=True`` reads torchvision's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``), ``pretrained="path.pth"`` reads a local file (for timm
models: timm's state dict, ``.pth`` or ``.safetensors``, or torchvision's for the ResNets, whose keys
are timm's); when the file is not there, ``PretrainedWeightsError`` says which file to put where.

Inputs are normalised with the mean and std the backbone was pretrained with
(``backbone_normalization``): timm's pretrained config for timm models, ImageNet's for the VGGs.
"""
from __future__ import annotations

import copy
import difflib
import os
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.vgg import make_layers

from ..attention.placement import insert_attention, replace_convs
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError, PretrainedWeightsError
from ..safeload import load_tensors, refusal, unsafe_message
from .maxpool import use_fast_pools

TORCHVISION_VGGS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
BACKBONES = TORCHVISION_VGGS + ("vgg_small",)
TIMM_PREFIX = "timm:"  # any timm model: "timm:<model name>"


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
        model = name[len(TIMM_PREFIX):].strip()
        if not model:
            return f"'{name}' names no timm model (write 'timm:<model name>')"
        import timm

        if timm.is_model(model):
            return None
        close = difflib.get_close_matches(model, timm.list_models(), n=1, cutoff=0.6)
        hint = f" (did you mean '{TIMM_PREFIX}{close[0]}'?)" if close else ""
        return f"'{name}': timm has no model '{model}'{hint}"
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


def backbone_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs the backbone was pretrained on: timm's pretrained config of a timm
    model (e.g. 0.5 for the original ViTs), ImageNet's for the VGGs and vgg_small."""
    if name.startswith(TIMM_PREFIX):
        import timm

        cfg = timm.get_pretrained_cfg(name[len(TIMM_PREFIX):].strip())
        if cfg is not None and cfg.mean is not None and cfg.std is not None:
            return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def input_normalization(cfg: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the inputs of a resolved config are normalised with: ``data.mean`` / ``data.std``
    where set, the backbone's otherwise (``backbone_normalization``)."""
    mean, std = backbone_normalization(cfg["model"]["backbone"])
    d = cfg["data"]
    return (tuple(d["mean"]) if d.get("mean") is not None else mean,
            tuple(d["std"]) if d.get("std") is not None else std)


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
    state = _read_weights(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    trunk_state = {k: v for k, v in state.items() if k.startswith("features.")}
    if not trunk_state:
        raise PretrainedWeightsError(f"{path}: no 'features.*' keys; is this a VGG state dict?")
    missing, _ = trunk.load_state_dict(trunk_state, strict=False)
    missing = [k for k in missing if k.startswith("features.")]
    if missing:
        raise PretrainedWeightsError(f"{path}: does not match {name!r}; missing keys {missing[:5]}...")


def build_backbone(name: str = "vgg_small", pretrained=False, width: int = 16, attention=None,
                   input_size: int | None = None, kwargs: dict | None = None) -> nn.Module:
    """Build a trunk by name; the returned module has ``out_channels``.

    ``attention`` (``model.attention``: ``type``, ``stages``, ``identity_init``, ``kwargs``) inserts
    attention blocks at the end of VGG stages after the pretrained weights are loaded (see
    ``raccnn.attention.placement``); the trunk's own parameter names do not change. With
    ``replace_convs`` (type ``sasa`` only) the stages' 3×3 convolutions become SASA layers instead.
    ``input_size`` (a side, px) and ``kwargs`` (extra ``timm.create_model`` arguments) concern timm
    models only.
    """
    if kwargs and not name.startswith(TIMM_PREFIX):
        raise ConfigError(f"model.backbone_kwargs {kwargs}: only timm backbones take extra arguments, not {name!r}")
    trunk = _build_trunk(name, pretrained, width, input_size, kwargs or {})
    if attention and attention.get("replace_convs"):
        replace_convs(trunk, attention.get("stages", ()), **dict(attention.get("kwargs") or {}))
    elif attention:
        insert_attention(trunk, attention.get("type", "none"), attention.get("stages", ()),
                         attention.get("identity_init", True), **dict(attention.get("kwargs") or {}))
    return trunk


def build_backbones(name: str, input_sizes, pretrained=False, width: int = 16, attention=None,
                    kwargs: dict | None = None) -> list[nn.Module]:
    """One trunk per scale (``input_sizes``: the scales' input sides), all with the first one's
    weights: copies of it, or, for a timm model built for its input size, the same model built for
    each scale's size with the first one's weights loaded (``TimmTrunk.for_input_size``)."""
    first = build_backbone(name, pretrained, width, attention, input_sizes[0], kwargs)
    if isinstance(first, TimmTrunk):
        return [first] + [first.for_input_size(size) for size in input_sizes[1:]]
    return [first] + [copy.deepcopy(first) for _ in input_sizes[1:]]


def _build_trunk(name: str, pretrained, width: int, input_size: int | None, kwargs: dict) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        return TimmTrunk(name[len(TIMM_PREFIX):].strip(), pretrained, input_size, **kwargs)
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
    """A timm model's last feature map [B, C, h, w], from ``forward_intermediates`` with the model's
    final norm and NCHW output, whatever the model's own layout (channels-last stages, tokens).

    Input size: a model that timm marks as bound to its input size (``fixed_input_size`` in its
    pretrained config: Swin, ViT, ...) is built for ``input_size`` (``img_size``), the window
    attention masks and shifts of its stages being those of that size. Where that size would
    change a parameter (ViT's position embedding, a grid of the pretraining size), the model is
    built with ``dynamic_img_size=True`` instead, which interpolates the embedding to each input:
    the scales copy each other's weights, so they must have parameters of the same shapes.
    """

    def __init__(self, model_name: str, pretrained=False, input_size: int | None = None, **kwargs):
        super().__init__()
        import timm

        if pretrained is True:
            cfg = timm.get_pretrained_cfg(model_name)
            where = (f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
                     if cfg is not None and cfg.hf_hub_id else "timm's checkpoint")
            raise PretrainedWeightsError(
                f"timm:{model_name}: raccnn never downloads weights; set model.pretrained to a local "
                f"weights file (on a machine with internet, download {where} and copy it here)."
            )
        if pretrained and not Path(pretrained).is_file():
            raise PretrainedWeightsError(
                f"model.pretrained={str(pretrained)!r}: no such file. Put the state dict of timm:{model_name} "
                f"there (timm's .pth or .safetensors; for a ResNet also torchvision's)."
            )
        self.model_name, self.kwargs = model_name, dict(kwargs)
        cfg = timm.get_pretrained_cfg(model_name)
        sized = bool(cfg is not None and cfg.fixed_input_size and input_size
                     and not {"img_size", "dynamic_img_size"} & set(kwargs))  # the user's choice stands
        body = self.create(**kwargs, **({"img_size": input_size} if sized else {}))
        if sized and getattr(body, "pos_embed", None) is not None and hasattr(body, "dynamic_img_size"):
            body = self.create(dynamic_img_size=True, **kwargs)
            sized = False
        self.input_size = input_size if sized else None  # the size the model is built for, if bound to one
        self.check_input_size(body, input_size)
        if pretrained:
            load_timm_state(body, model_name, Path(pretrained))
        body.prune_intermediate_layers(1, prune_norm=False, prune_head=True)  # drop the classifier head
        self.body = body
        self.out_channels = body.feature_info[-1]["num_chs"]
        self.register_load_state_dict_pre_hook(_unflatten_feature_names)

    def create(self, **kwargs) -> nn.Module:
        """``timm.create_model`` without a classifier; ConfigError when ``model.backbone_kwargs``
        are arguments the model does not take."""
        import timm

        try:
            return timm.create_model(self.model_name, num_classes=0, **kwargs)
        except (TypeError, ValueError, AssertionError, IndexError) as exc:
            if not self.kwargs:
                raise
            raise ConfigError(f"model.backbone_kwargs {self.kwargs}: timm:{self.model_name} does not take them "
                              f"({type(exc).__name__}: {exc})") from None

    def for_input_size(self, size: int) -> "TimmTrunk":
        """A trunk with this one's weights for inputs of side ``size`` (a copy unless the model is
        built for its input size); the global random state is left as it was."""
        if self.input_size is None or size == self.input_size:
            self.check_input_size(self.body, size)
            return copy.deepcopy(self)
        with torch.random.fork_rng(devices=[]):
            other = TimmTrunk(self.model_name, False, size, **self.kwargs)
        theirs = other.state_dict()
        for key, value in self.state_dict().items():
            if theirs[key].shape != value.shape:
                raise ConfigError(
                    f"model.input_sizes: timm:{self.model_name} built for {self.input_size} and for {size} px has "
                    f"parameters of different shapes ({key}: {list(value.shape)} and {list(theirs[key].shape)}); "
                    f"the scales copy each other's weights, so choose sizes where its windows agree"
                )
        other.load_state_dict(self.state_dict())
        return other

    def check_input_size(self, body: nn.Module, size: int | None) -> None:
        """ConfigError unless a model cutting its input into patches of its own gets a whole number
        of them (ViT's patch embedding takes no remainder)."""
        patch = getattr(getattr(body, "patch_embed", None), "patch_size", None)
        if size and patch and getattr(body.patch_embed, "dynamic_img_pad", True) is False and size % patch[0]:
            raise ConfigError(f"model.input_sizes: timm:{self.model_name} cuts its input into {patch[0]}-px patches; "
                              f"{size} px is not a multiple of {patch[0]}")

    def forward(self, x):
        return self.body.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]


def _unflatten_feature_names(trunk: TimmTrunk, state: dict, prefix: str, *args) -> None:
    """Read a state dict of the earlier trunk, timm's ``features_only`` model: it named the children
    of the model's top-level Sequentials ``stages_0``, ``stem_1``, ... where the model itself has
    ``stages.0``, ``stem.1`` (ConvNeXt's, e.g.), so that checkpoints of that trunk still load."""
    body = prefix + "body."
    children = dict(trunk.body.named_children())
    for key in [k for k in state if k.startswith(body)]:
        head, _, rest = key[len(body):].partition(".")
        parent, _, index = head.rpartition("_")
        if head not in children and index.isdigit() and isinstance(children.get(parent), nn.Sequential):
            state[f"{body}{parent}.{index}.{rest}"] = state.pop(key)


def _read_weights(path: Path):
    """A weights file's contents through the restricted unpickler, or one error naming the file."""
    try:
        return load_tensors(path)
    except Exception as exc:  # a refused object, or not a torch file at all
        raise unreadable_weights(exc, path) from None


def unreadable_weights(exc: Exception, path: Path) -> PretrainedWeightsError:
    """The one-line error for a weights file that could not be read: what the safe loader refused
    in it, or the reader's first line."""
    what = refusal(exc, path)
    if what is not None:
        return PretrainedWeightsError(unsafe_message(path, what))
    return PretrainedWeightsError(f"{path}: not a readable state dict ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})")


def load_timm_state(model: nn.Module, model_name: str, path: Path) -> None:
    """Load a state dict file into a timm model built without a classifier: timm's reader (tensors
    only, ``.safetensors`` too) and the model family's own checkpoint conversion where timm has
    one; the file's classifier weights are left out, any other difference is an error."""
    import timm
    from timm.models import load_state_dict

    try:
        state = load_state_dict(str(path))  # torch files through the restricted unpickler
    except Exception as exc:  # not a state dict: pickle, zip or safetensors errors of every kind
        raise unreadable_weights(exc, path) from None
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, model)
        except Exception as exc:  # the conversion met keys or shapes it does not know
            raise PretrainedWeightsError(f"{path}: timm cannot convert it for timm:{model_name} "
                                         f"({type(exc).__name__}: {exc})") from None
    cfg = timm.get_pretrained_cfg(model_name)
    heads = cfg.classifier if cfg is not None and cfg.classifier else ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    own = model.state_dict()
    wrong = [f"{k}: {list(v.shape)} in the file, {list(own[k].shape)} in the model"
             for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise PretrainedWeightsError(
            f"{path}: does not match timm:{model_name}" + "".join(
                f"; {what} {items[:3]}{'...' if len(items) > 3 else ''}"
                for what, items in (("shapes", wrong), ("missing keys", missing), ("unexpected keys", unexpected))
                if items)
        )
    model.load_state_dict(state)
