"""RA-CNN: a recurrent stack of scales that classify, propose a square and zoom into it.

Scale 1 sees the whole image (resized to ``input_sizes[0]``). Scale s's APN reads scale s's last-conv
features and proposes a square *relative to scale s's view*; scale s+1 sees that square zoomed to
``input_sizes[s]``. As in the paper, each scale has its own backbone copy and classifier, and every
copy starts from the same initialisation.

Crops are always sampled from the full-resolution input images: the relative boxes are composed into
absolute ones first. That is the paper's recurrence (scale 3 sees a square inside scale 2's square)
without resampling an already resampled crop, so a zoom never loses detail the input still had.
With ``input_sizes[0]`` equal to the image size (the paper: 448) it is exactly the paper's setting.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import backbone_normalization, build_backbones, input_normalization
from .boxes import clamp_squares, compose_boxes, full_image_boxes
from .crop import K_DEFAULT, attention_crop, compiled_attention_crop
from .fusion import build_fusion
from .proposers import PROPOSER_OPTIONS, PROPOSERS, part_index


@dataclass
class RACNNOutput:
    """Per-scale results of one forward pass (lists are indexed by scale, 0 = scale 1)."""

    logits: list[Tensor]  # n_scales x [B, K]
    features: list[Tensor]  # n_scales x [B, C], globally average-pooled last-conv features
    maps: list[Tensor]  # n_scales x [B, C, h, w], last-conv feature maps
    boxes: list[Tensor]  # (n_scales - 1) x [B, 3], each APN's square relative to its scale's view
    abs_boxes: list[Tensor]  # (n_scales - 1) x [B, 3], the same squares in input-image coordinates
    fused: dict[str, Tensor]  # "12", "123", ...: logits of the fusion heads over scales 1..s
    crops: list[Tensor] | None = None  # n_scales x [B, 3, S, S], each scale's input (on request)


class ScaleNet(nn.Module):
    """One scale: backbone trunk, global average pool, linear classifier."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x: Tensor):
        fmap = self.backbone(x)
        feat = fmap.mean(dim=(2, 3))
        return self.classifier(self.dropout(feat)), feat, fmap


class RACNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        backbone: str = "vgg_small",
        pretrained=False,
        width: int = 16,
        n_scales: int = 3,
        input_sizes=(64, 64, 64),
        dropout: float = 0.0,
        apn: dict | None = None,
        crop_k: float = K_DEFAULT,
        crop_grad: str = "mask",
        crop_impl: str = "auto",
        crop_compile: bool = False,
        attention: dict | None = None,
        proposer: str = "apn",
        proposer_cfg: dict | None = None,
        oracle_part: int | None = None,
        fusion: str = "features",
        backbone_kwargs: dict | None = None,
        normalization: tuple | None = None,
    ):
        """``apn``: the ``model.apn`` keys (bounds for every proposer, sizes for the APN);
        ``proposer_cfg``: the ``model.proposer_cfg`` keys (``PROPOSER_OPTIONS``); ``oracle_part``:
        the index of the part the oracle proposer zooms on; ``backbone_kwargs``: extra arguments of a
        timm backbone (``model.backbone_kwargs``); ``normalization``: the (mean, std) its inputs are
        normalised with, kept as ``input_normalization`` (default: the backbone's pretraining)."""
        super().__init__()
        input_sizes = [int(s) for s in input_sizes]
        if len(input_sizes) != n_scales:
            raise ValueError(f"input_sizes has {len(input_sizes)} entries for n_scales={n_scales}")
        self.num_classes, self.n_scales, self.input_sizes = num_classes, n_scales, input_sizes
        self.crop_k, self.crop_grad, self.crop_impl = float(crop_k), crop_grad, crop_impl
        self.crop_compile = bool(crop_compile)
        self.input_normalization = tuple(normalization or backbone_normalization(backbone))
        trunks = build_backbones(backbone, input_sizes, pretrained=pretrained, width=width, attention=attention,
                                 kwargs=backbone_kwargs)
        self.scales = nn.ModuleList(ScaleNet(trunk, num_classes, dropout) for trunk in trunks)
        channels = trunks[0].out_channels
        if proposer not in PROPOSERS:
            raise ValueError(f"unknown proposer {proposer!r}; choose one of {list(PROPOSERS)}")
        self.proposer = proposer
        # proposer s (an APN, or the centre, heat-map or oracle rule) gives the square scale s+2 zooms into
        self.proposers = nn.ModuleList(
            self.make_proposer(channels, dict(apn or {}), dict(proposer_cfg or {}), oracle_part)
            for _ in range(n_scales - 1)
        )
        self.register_load_state_dict_pre_hook(_rename_apns)
        with torch.random.fork_rng(devices=[]):  # whichever head: the same random numbers for what follows
            self.fusion = build_fusion(fusion, n_scales, channels, num_classes)  # models/fusion.py

    @property
    def apns(self) -> nn.ModuleList:
        """The former name of ``proposers``."""
        return self.proposers

    def make_proposer(self, channels: int, apn: dict, proposer_cfg: dict, oracle_part: int | None) -> nn.Module:
        kwargs = {k: apn[k] for k in ("tl_min", "tl_max", "keep_inside") if k in apn}
        if self.proposer == "apn":
            kwargs.update(apn)
        kwargs.update({arg: proposer_cfg[key] for key, (name, arg, _, _) in PROPOSER_OPTIONS.items()
                       if name == self.proposer and key in proposer_cfg})
        if self.proposer == "oracle":
            kwargs["part"] = oracle_part
        return PROPOSERS[self.proposer](channels, **kwargs)

    def oracle_boxes(self, images: Tensor, part_boxes: Tensor | None) -> list[Tensor]:
        """The oracle's squares: the part's square for scale 2, the whole view for deeper scales."""
        part_boxes = part_boxes.to(images.device) if part_boxes is not None else None
        return [p.squares(part_boxes, *images.shape[-2:], first=s == 0) for s, p in enumerate(self.proposers)]

    def scale_input(self, images: Tensor, abs_box: Tensor | None, s: int) -> Tensor:
        size = self.input_sizes[s]
        if abs_box is None:
            if tuple(images.shape[-2:]) == (size, size):
                return images
            return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return self.crop(images, abs_box, size)

    def crop(self, images: Tensor, abs_box: Tensor, size: int, impl: str | None = None) -> Tensor:
        """The square ``abs_box`` of ``images`` zoomed to ``size``, with this model's crop settings
        (``impl`` overrides ``crop_impl``)."""
        crop = compiled_attention_crop() if self.crop_compile else attention_crop
        return crop(images, abs_box, size, k=self.crop_k, grad=self.crop_grad, impl=impl or self.crop_impl)

    def forward(
        self,
        images: Tensor,
        boxes: list[Tensor | None] | None = None,
        return_crops: bool = False,
        detach_boxes: bool = False,
        part_boxes: Tensor | None = None,
        box_jitter: float = 0.0,
    ):
        """``boxes`` optionally replaces APN s's square (relative to scale s's view) by a given one;
        ``detach_boxes`` stops the gradient of finer scales from reaching the squares (and so the
        APNs and, through them, the coarser scales' features). ``part_boxes`` [B, P, 4] (xyxy
        pixels) feed the oracle proposer and are ignored otherwise. ``box_jitter`` > 0 (with
        ``detach_boxes`` only) adds Gaussian noise of that spread to each square (tx, ty, tl, view
        units), clipped into the proposer's bounds: the finer scales' crop augmentation
        (``train.alternate.cls.box_jitter``)."""
        if box_jitter > 0 and not detach_boxes:
            raise ValueError("box_jitter needs detach_boxes: the noise is an augmentation of fixed squares")
        if self.proposer == "oracle" and boxes is None:
            boxes = self.oracle_boxes(images, part_boxes)
        logits, feats, maps, rel_boxes, abs_boxes, crops = [], [], [], [], [], []
        abs_box = None
        for s, net in enumerate(self.scales):
            x = self.scale_input(images, abs_box, s)
            if return_crops:
                crops.append(x)
            out, feat, fmap = net(x)
            logits.append(out)
            feats.append(feat)
            maps.append(fmap)
            if s + 1 < self.n_scales:
                given = boxes[s] if boxes is not None and s < len(boxes) else None
                rel = (given if given is not None else self.proposers[s](fmap)).float()  # fp32 under autocast
                if detach_boxes:
                    rel = rel.detach()
                if box_jitter > 0:
                    p = self.proposers[s]
                    rel = clamp_squares(rel + box_jitter * torch.randn_like(rel), p.tl_min, p.tl_max, p.keep_inside)
                parent = abs_box if abs_box is not None else full_image_boxes(len(images), rel.device, rel.dtype)
                abs_box = compose_boxes(parent, rel)
                rel_boxes.append(rel)
                abs_boxes.append(abs_box)
        fused = {name: head(feats, logits) for name, head in self.fusion.items()}
        return RACNNOutput(logits, feats, maps, rel_boxes, abs_boxes, fused, crops if return_crops else None)


def _rename_apns(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before ``apns`` became ``proposers`` load under the new name."""
    old = prefix + "apns."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[prefix + "proposers." + key[len(old):]] = state_dict.pop(key)


def build_racnn(cfg: dict, num_classes: int, part_names=()) -> RACNN:
    """Build the model from a resolved config's ``model`` section; ``part_names`` (the dataset's)
    locate the oracle proposer's part, the first of ``data.hit_parts`` among them."""
    m = cfg["model"]
    return RACNN(
        num_classes=num_classes,
        backbone=m["backbone"],
        pretrained=m["pretrained"],
        width=m["width"],
        n_scales=m["n_scales"],
        input_sizes=m["input_sizes"],
        dropout=m["dropout"],
        apn=dict(m["apn"]),
        crop_k=m["crop"]["k"],
        crop_grad=m["crop"]["grad"],
        crop_impl=m["crop"]["impl"],
        crop_compile=m["crop"]["compile"],
        attention=m["attention"],
        proposer=m["proposer"],
        proposer_cfg=m["proposer_cfg"],
        oracle_part=part_index(part_names, cfg["data"]["hit_parts"]),
        fusion=m["fusion"],
        backbone_kwargs=m["backbone_kwargs"],
        normalization=input_normalization(cfg),
    )
