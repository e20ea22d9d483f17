"""Pictures of what RA-CNN looks at, and the TensorBoard tags of a training run.

``crop_panel`` turns a batch and the model's output (``model(images, return_crops=True)``) into one
uint8 image with a row per input image:

    scale-1 input + the scale-2 and scale-3 squares (and ground-truth part / object boxes)
    | scale-2 crop + the scale-3 square (in scale-2 crop coordinates) | scale-3 crop

(and so on for models with more scales).

Every tile has the same height; boxes are drawn with ``torchvision.utils.draw_bounding_boxes`` in the
colours of ``BOX_COLOURS`` (described by ``LEGEND``), and the tiles are laid out with ``make_grid``.

Squares are (tx, ty, tl): centre and half side in normalised coordinates of the view they live in
(x rightwards, y downwards, both in [0, 1]).

TensorBoard tags are declared once, in ``TAG_TEMPLATES``; ``scalar_tags``, ``histogram_tags`` and
``crops_tag`` expand them for a given model. Besides them, each ``train/<term>`` is also written once
per epoch as its epoch mean, ``train_epoch/<term>``.
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import draw_bounding_boxes, make_grid

from ..data.collate import collate_samples
from ..data.device_input import model_normalization, to_model_input
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..models.boxes import square_to_xyxy
from ..models.fusion import fusion_names

# RGB colours of the drawn boxes; the legend below names them.
BOX_COLOURS = {
    "scale2": (255, 0, 0),  # red: the square scale 2 zooms into
    "scale3": (255, 255, 0),  # yellow: the square scale 3 zooms into
    "scale4": (255, 0, 255),  # magenta, scale 4 (models with more than three scales)
    "scale5": (0, 255, 255),  # cyan, scale 5
    "part": (0, 255, 0),  # green: ground-truth box of the discriminative part
    "object": (0, 128, 255),  # blue: ground-truth object box
}
LEGEND = (
    "red = scale-2 square, yellow = scale-3 square, green = ground-truth part box, blue = object box; "
    "columns: scale-1 input | scale-2 crop (with the scale-3 square) | scale-3 crop"
)

# --------------------------------------------------------------------------------------------
# TensorBoard tags written during training. Placeholders:
#   {s}     scale, 1..n_scales
#   {apn}   APN, 1..n_scales-1 (APN a proposes the square scale a+1 zooms into)
#   {name}  fusion head, "12", "123", ...
#   {pair}  neighbouring scales of a rank-loss hinge, "1_2", "2_3", ...
#   {phase} phase label, made tag-safe by crops_tag()
TAG_TEMPLATES = {
    "scalars": (
        "train/ce_scale{s}",  # cross-entropy of each scale (classifier phases)
        "train/rank",  # rank loss (APN phases)
        "train/init_apn_mse",  # APN regression onto the strongest-response squares (init_apn)
        "train/ce_fused{name}",  # cross-entropy of each fusion head (fusion; model.fusion: features only)
        "train/rank_active_{pair}",  # fraction of active rank hinges (APN phases)
        "train/grad_norm",  # of the phase's trainable parameters, every step
        "train/lr",
        "val/acc_scale{s}",
        "val/acc_fused{name}",
        "val/ce",
        "val/rank",
        "val/rank_active_{pair}",
        "schedule/phase_index",
        "schedule/round",
        "apn{apn}/tl_mean",  # statistics of the APN's own squares on the validation split
        "apn{apn}/tl_std",
        "apn{apn}/tx_mean",
        "apn{apn}/ty_mean",
        "apn{apn}/frac_at_min",
        "apn{apn}/frac_at_max",
        "apn{apn}/dtx",  # mean |change| of the squares on the same images since the previous epoch
        "apn{apn}/dty",
        "apn{apn}/dtl",
        "apn{apn}/part_hit",  # of the square scale apn+1 zooms into (datasets with part annotations)
    ),
    "histograms": ("apn{apn}/tx", "apn{apn}/ty", "apn{apn}/tl"),  # validation squares, every epoch
    "images": ("crops/{phase}",),  # crop_panel of fixed_images at the end of every phase / round
}


def expand_tag(template: str, n_scales: int) -> list[str]:
    """The tags of ``template`` (``TAG_TEMPLATES``) for a model with ``n_scales`` scales."""
    if "{s}" in template:
        return [template.format(s=s) for s in range(1, n_scales + 1)]
    if "{apn}" in template:
        return [template.format(apn=a) for a in range(1, n_scales)]
    if "{pair}" in template:
        return [template.format(pair=f"{a}_{a + 1}") for a in range(1, n_scales)]
    if "{name}" in template:
        return [template.format(name=name) for name in fusion_names(n_scales)]
    return [template]


def scalar_tags(n_scales: int, fusion: str = "features") -> list[str]:
    """Every scalar tag a run of a model with ``n_scales`` scales and ``model.fusion`` = ``fusion``
    writes (the ``log_probs`` heads are fitted without training steps: no fusion loss)."""
    return [tag for t in TAG_TEMPLATES["scalars"] if fusion == "features" or t != "train/ce_fused{name}"
            for tag in expand_tag(t, n_scales)]


def histogram_tags(n_scales: int) -> list[str]:
    return [tag for t in TAG_TEMPLATES["histograms"] for tag in expand_tag(t, n_scales)]


def crops_tag(phase_label: str) -> str:
    """Image tag of a phase: "alternate_cls[round 1]" -> "crops/alternate_cls_round_1"."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", phase_label).strip("_")
    return TAG_TEMPLATES["images"][0].format(phase=safe)


class _NoWriter:
    """What ranks other than 0 use in place of a SummaryWriter: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def open_writer(work_dir: str, main: bool, purge_step: int | None = None):
    """The run's TensorBoard writer on rank 0 (event files in the work dir, so ``tensorboard
    --logdir work_dirs`` lists the runs; ``purge_step`` drops points an interrupted run wrote past
    its checkpoint), a writer that does nothing elsewhere."""
    return SummaryWriter(log_dir=work_dir, purge_step=purge_step) if main else _NoWriter()


# --------------------------------------------------------------------------------------------
# Geometry and pixels


def denormalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Undo the normalisation (ImageNet's unless given): float [B, 3, H, W] -> uint8 [B, 3, H, W]."""
    images = images.detach().float().cpu()
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return ((images * s + m).clamp(0, 1) * 255).round().to(torch.uint8)


def _draw(tile: Tensor, boxes: Tensor, colour: tuple, line: int) -> Tensor:
    """Draw the finite boxes [N, 4] (pixel xyxy) on a uint8 tile, clamped to its pixels."""
    boxes = boxes.reshape(-1, 4).float()
    boxes = boxes[torch.isfinite(boxes).all(dim=1)]
    if not len(boxes):
        return tile
    h, w = tile.shape[-2:]
    boxes = torch.stack(
        (boxes[:, 0].clamp(0, w - 1), boxes[:, 1].clamp(0, h - 1), boxes[:, 2].clamp(0, w - 1), boxes[:, 3].clamp(0, h - 1)),
        dim=1,
    )
    return draw_bounding_boxes(tile, boxes, colors=[colour] * len(boxes), width=line)


def _resize(tile: Tensor, height: int) -> Tensor:
    """uint8 [3, h, w] -> uint8 [3, height, w * height / h]."""
    h, w = tile.shape[-2:]
    size = (height, max(1, round(w * height / h)))
    if (h, w) == size:
        return tile
    out = F.interpolate(tile[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def _pad_to_width(tile: Tensor, width: int) -> Tensor:
    extra = width - tile.shape[-1]
    return F.pad(tile, (extra // 2, extra - extra // 2)) if extra > 0 else tile


def crop_panel(images: Tensor, out, part_boxes: Tensor | None = None, object_boxes: Tensor | None = None,
               hit_part_index: int | None = None, height: int | None = None, line: int = 2,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """One uint8 image [3, H', W'] with a row per image (see the module docstring).

    ``images`` [B, 3, H, W] normalised model input; ``out`` the model's output for it, computed with
    ``return_crops=True``. ``part_boxes`` [B, 4] or [B, P, 4] and ``object_boxes`` [B, 4] are pixel
    xyxy in ``images`` (NaN rows are skipped); with [B, P, 4], ``hit_part_index`` selects the part
    to draw (None: all parts). Tiles are resized to ``height`` (default: H) and padded to a common
    width. Works for up to 5 scales (one colour per scale in ``BOX_COLOURS``). ``mean`` and ``std``:
    the normalisation of ``images``, undone for the picture.
    """
    if out.crops is None:
        raise ValueError("crop_panel needs the crops: run the model with return_crops=True")
    n_scales = len(out.crops)
    if f"scale{n_scales}" not in BOX_COLOURS and n_scales > 1:
        raise ValueError(f"crop_panel has box colours for at most 5 scales, the output has {n_scales}")
    B, _, H, W = images.shape
    height = height or H

    rows = []
    for b in range(B):
        # scale 1: the input image with every square and the ground-truth boxes
        tile = _resize(denormalize(images[b : b + 1], mean, std)[0], height)
        th, tw = tile.shape[-2:]
        sy, sx = th / H, tw / W
        if object_boxes is not None:
            tile = _draw(tile, object_boxes[b].float().cpu() * torch.tensor([sx, sy, sx, sy]), BOX_COLOURS["object"], line)
        if part_boxes is not None:
            parts = part_boxes[b].float().cpu().reshape(-1, 4)
            if hit_part_index is not None:
                parts = parts[hit_part_index : hit_part_index + 1]
            tile = _draw(tile, parts * torch.tensor([sx, sy, sx, sy]), BOX_COLOURS["part"], line)
        for s, box in enumerate(out.abs_boxes, start=2):
            tile = _draw(tile, square_to_xyxy(box[b : b + 1].float().cpu(), th, tw), BOX_COLOURS[f"scale{s}"], line)
        tiles = [tile]
        # scales 2..n: the zoomed crop, with the next scale's square relative to this crop
        for s in range(1, n_scales):
            tile = _resize(denormalize(out.crops[s][b : b + 1], mean, std)[0], height)
            if s + 1 < n_scales:
                th, tw = tile.shape[-2:]
                tile = _draw(tile, square_to_xyxy(out.boxes[s][b : b + 1].float().cpu(), th, tw), BOX_COLOURS[f"scale{s + 2}"], line)
            tiles.append(tile)
        rows.append(tiles)

    width = max(t.shape[-1] for tiles in rows for t in tiles)
    flat = [_pad_to_width(t, width) for tiles in rows for t in tiles]
    return make_grid(flat, nrow=n_scales, padding=2, pad_value=255)


@torch.no_grad()
def model_panel(model, batch: dict, hit_part: int | None = None, device=None) -> Tensor:
    """Run ``model`` in eval mode on ``batch`` (as from ``fixed_images``) and return its crop_panel.
    The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        device = device or next(model.parameters()).device
        images = to_model_input(batch["image"], device, model_normalization(model))
        out = model(images, return_crops=True, part_boxes=batch.get("part_boxes"))
    finally:
        model.train(was_training)
    mean, std = model_normalization(model)
    return crop_panel(images.cpu(), out, batch.get("part_boxes"), batch.get("box"), hit_part, mean=mean, std=std)


def fixed_images(dataset, n: int = 8) -> dict:
    """The same ``n`` samples of ``dataset`` on every call, evenly spaced over it, as a batch
    (``image``, ``label``, ``index``, ``box``, ``part_boxes``, ...). Pass the validation split; any
    random transform is run under a fixed seed, so even a training split gives the same batch."""
    count = len(dataset)
    if count == 0:
        raise ValueError("fixed_images: the dataset is empty")
    n = min(n, count)
    indices = [i * count // n for i in range(n)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return collate_samples([dataset[i] for i in indices])


# --------------------------------------------------------------------------------------------
# TensorBoard


def log_crops(writer, tag: str, panel: Tensor, step: int) -> None:
    """Write a crop_panel (uint8 [3, H, W]) as one TensorBoard image."""
    writer.add_image(tag, panel, step, dataformats="CHW")


def log_box_histograms(writer, rel_boxes: list[Tensor], step: int) -> None:
    """Histograms of tx, ty, tl of each APN's squares (relative to its scale's view): ``apn{a}/tx`` ..."""
    for a, boxes in enumerate(rel_boxes, start=1):
        boxes = boxes.detach().float().cpu().reshape(-1, 3)
        for j, name in enumerate(("tx", "ty", "tl")):
            writer.add_histogram(f"apn{a}/{name}", boxes[:, j], step)


def log_phase_crops(writer, model, batch: dict, phase_label: str, step: int, hit_part: int | None = None) -> None:
    """The end-of-phase picture: ``model_panel`` of ``batch`` under ``crops_tag(phase_label)``."""
    log_crops(writer, crops_tag(phase_label), model_panel(model, batch, hit_part), step)


# --------------------------------------------------------------------------------------------
# Text


def text_histogram(values: Tensor, bins: int = 10, lo: float = 0.0, hi: float = 1.0, bar: int = 40) -> str:
    """A histogram as lines of text: "[lo, hi)  count  ####"."""
    values = torch.as_tensor(values).detach().double().cpu().flatten()
    counts = torch.histc(values, bins=bins, min=lo, max=hi).long().tolist()
    top = max(max(counts), 1)
    step = (hi - lo) / bins
    lines = []
    for i, c in enumerate(counts):
        a, b = lo + i * step, lo + (i + 1) * step
        lines.append(f"[{a:.2f}, {b:.2f}{']' if i == bins - 1 else ')'} {c:5d} {'#' * round(bar * c / top)}")
    outside = int(((values < lo) | (values > hi)).sum())
    if outside:
        lines.append(f"({outside} outside [{lo}, {hi}])")
    return "\n".join(lines)
