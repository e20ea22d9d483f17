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

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .apn import APN
from .backbones import build_backbone
from .crop import attention_crop
from .proposers import CenterProposer, HeatmapProposer, OracleProposer, part_squares


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


def compose_boxes(parent: Tensor, child: Tensor) -> Tensor:
    """Express ``child`` (relative to the ``parent`` square's view) in the parent's own coordinates."""
    side = 2 * parent[:, 2:3]
    origin = parent[:, :2] - parent[:, 2:3]
    return torch.cat((origin + child[:, :2] * side, child[:, 2:3] * side), dim=1)


def full_image_boxes(batch: int, device=None, dtype=torch.float32) -> Tensor:
    return torch.tensor([[0.5, 0.5, 0.5]], device=device, dtype=dtype).expand(batch, 3)


def fusion_name(n: int) -> str:
    return "".join(str(s + 1) for s in range(n))


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
        input_sizes=(448, 224, 224),
        dropout: float = 0.0,
        apn: dict | None = None,
        crop_k: float = 10.0,
        crop_grad: str = "mask",
        attention: dict | None = None,
        proposer: str = "apn",
        proposer_cfg: dict | None = None,
    ):
        super().__init__()
        input_sizes = [int(s) for s in input_sizes]
        if len(input_sizes) != n_scales:
            raise ValueError(f"input_sizes has {len(input_sizes)} entries for n_scales={n_scales}")
        self.num_classes, self.n_scales, self.input_sizes = num_classes, n_scales, input_sizes
        self.crop_k, self.crop_grad = float(crop_k), crop_grad
        trunk = build_backbone(backbone, pretrained=pretrained, width=width, attention=attention)
        self.scales = nn.ModuleList(
            ScaleNet(trunk if s == 0 else copy.deepcopy(trunk), num_classes, dropout) for s in range(n_scales)
        )
        channels = trunk.out_channels
        self.proposer, self.proposer_cfg = proposer, dict(proposer_cfg or {})
        self.oracle_part: int | None = None  # index of the part the oracle zooms on (set by the caller)
        self.apns = nn.ModuleList(self.make_proposer(channels, apn or {}) for _ in range(n_scales - 1))
        self.fusion = nn.ModuleDict(
            {fusion_name(n): nn.Linear(n * channels, num_classes) for n in range(2, n_scales + 1)}
        )

    def make_proposer(self, channels: int, apn: dict) -> nn.Module:
        bounds = {k: apn[k] for k in ("tl_min", "tl_max", "keep_inside") if k in apn}
        if self.proposer == "apn":
            return APN(channels, **apn)
        if self.proposer == "center":
            return CenterProposer(tl=self.proposer_cfg.get("center_tl", 0.25), **bounds)
        if self.proposer == "heatmap":
            return HeatmapProposer(threshold=self.proposer_cfg.get("heatmap_threshold", 0.7), **bounds)
        if self.proposer == "oracle":
            return OracleProposer(**bounds)
        raise ValueError(f"unknown proposer {self.proposer!r}; choose apn, center, heatmap or oracle")

    def oracle_boxes(self, images: Tensor, part_boxes: Tensor | None) -> list[Tensor]:
        """The oracle's squares: the part's square for scale 2, the same view for deeper scales."""
        if part_boxes is None or self.oracle_part is None:
            raise RuntimeError("the oracle proposer needs part_boxes and model.oracle_part (a dataset with part boxes)")
        first = part_squares(part_boxes.to(images.device), self.oracle_part, *images.shape[-2:],
                             margin=self.proposer_cfg.get("oracle_margin", 1.1))
        keep = torch.tensor([[0.5, 0.5, 0.5]], device=images.device).expand(len(images), 3)
        return [p.clamp(first if s == 0 else keep) for s, p in enumerate(self.apns)]

    def scale_input(self, images: Tensor, abs_box: Tensor | None, s: int) -> Tensor:
        size = self.input_sizes[s]
        if abs_box is None:
            if tuple(images.shape[-2:]) == (size, size):
                return images
            return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return attention_crop(images, abs_box, size, k=self.crop_k, grad=self.crop_grad)

    def forward(
        self,
        images: Tensor,
        boxes: list[Tensor | None] | None = None,
        return_crops: bool = False,
        detach_boxes: bool = False,
        part_boxes: Tensor | None = None,
    ):
        """``boxes`` optionally replaces APN s's square (relative to scale s's view) by a given one;
        ``detach_boxes`` stops the gradient of finer scales from reaching the squares (and so the
        APNs and, through them, the coarser scales' features). ``part_boxes`` [B, P, 4] (xyxy
        pixels) feed the oracle proposer and are ignored otherwise."""
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
                rel = given if given is not None else self.apns[s](fmap)
                if detach_boxes:
                    rel = rel.detach()
                parent = abs_box if abs_box is not None else full_image_boxes(len(images), rel.device, rel.dtype)
                abs_box = compose_boxes(parent, rel)
                rel_boxes.append(rel)
                abs_boxes.append(abs_box)
        fused = {name: head(torch.cat(feats[: len(name)], dim=1)) for name, head in self.fusion.items()}
        return RACNNOutput(logits, feats, maps, rel_boxes, abs_boxes, fused, crops if return_crops else None)

    # Parameter groups used by the alternating schedule.
    def classifier_parameters(self):
        return [p for net in self.scales for p in net.parameters()]

    def apn_parameters(self):
        return list(self.apns.parameters())

    def fusion_parameters(self):
        return list(self.fusion.parameters())


def build_racnn(cfg: dict, num_classes: int) -> RACNN:
    """Build the model from a resolved config's ``model`` section."""
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
        attention=m.get("attention"),
        proposer=m.get("proposer", "apn"),
        proposer_cfg=m.get("proposer_cfg"),
    )
