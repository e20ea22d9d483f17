"""Image + annotation transforms built on ``torchvision.transforms.v2``.

A sample travels through the pipeline as a dict of tv_tensors, so the library moves the
object box, the part boxes and the part points together with the pixels:

    {"image": tv_tensors.Image (uint8),
     "box": BoundingBoxes [1, 4] XYXY,          # NaN row when unknown
     "points": KeyPoints [P, 2] (x, y),          # NaN row for an invisible part
     "part_boxes": BoundingBoxes [P, 4] XYXY,    # NaN rows when unknown
     "flip_perm": tuple of P ints}               # part index swap for a horizontal flip

NaN survives resize, crop and flip unchanged, which is how "unknown" and "invisible" are
carried through.  :func:`finalize` turns the result into the plain tensors a dataset returns.

The standard pipeline does geometry only and leaves the image uint8: a DataLoader worker decodes,
resizes, crops and flips, and the batch crosses to the device at a quarter of the bytes of float
pixels; :func:`raccnn.data.device_input.to_model_input` then converts and normalises it there, a
batch at a time. That pipeline (:class:`raccnn.data.geometry.SampleGeometry`) calls torchvision's
kernels on the sample's tensors directly; any ``v2`` pipeline still takes the tv_tensors dict.

Coordinate conventions follow torchvision: boxes are continuous (a flip maps x to W - x),
key points are pixel indices (a flip maps x to W - 1 - x).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .geometry import SampleGeometry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def flip_permutation(part_names: Sequence[str]) -> tuple[int, ...]:
    """Index permutation that swaps left/right parts after a horizontal flip.

    "left eye" is paired with the part whose name is the same with "left" replaced by
    "right" (and vice versa); parts without a partner map to themselves.
    """
    index = {name.lower(): i for i, name in enumerate(part_names)}
    perm = list(range(len(part_names)))
    for i, name in enumerate(part_names):
        low = name.lower()
        if "left" in low:
            partner = low.replace("left", "right")
        elif "right" in low:
            partner = low.replace("right", "left")
        else:
            continue
        if partner in index:
            perm[i] = index[partner]
    return tuple(perm)


class HorizontalFlipWithParts:
    """Horizontal flip that also swaps left/right part slots (uses ``sample["flip_perm"]``)."""

    def __init__(self, p: float = 0.5):
        self.p = p
        self._flip = v2.RandomHorizontalFlip(p=1.0)

    def __call__(self, sample: dict) -> dict:
        if self.p <= 0 or torch.rand(1).item() >= self.p:
            return sample
        out = self._flip(sample)
        perm = list(out.get("flip_perm", ()))
        if perm:
            # After flipping the pixels, slot "left eye" holds the point that is now on the
            # right side of the bird, so the slots are re-ordered with the permutation.
            for key in ("points", "part_boxes"):
                if key in out:
                    out[key] = tv_tensors.wrap(out[key][perm], like=out[key])
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


TRANSFORM_OUTPUTS = ("uint8", "float")


def build_transforms(
    train: bool,
    resize: int | None,
    crop: int | None,
    flip: bool = True,
    flip_p: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    output: str = "uint8",
) -> Callable:
    """Standard pipeline.

    train: Resize(resize) -> RandomCrop(crop) -> horizontal flip (prob ``flip_p``, if ``flip``)
    test:  Resize(resize) -> CenterCrop(crop)
    ``resize`` resizes the shorter side; ``None`` skips a step (``resize=None, crop=None`` keeps
    the stored pixels).  ``output="uint8"`` ends there, with the uint8 image that
    :func:`~raccnn.data.device_input.to_model_input` turns into the model's input on the device:
    a :class:`~raccnn.data.geometry.SampleGeometry`, which calls torchvision's kernels on plain
    tensors.  ``output="float"`` is the ``v2.Compose`` of those transforms followed by
    ToDtype(float32, scale) -> Normalize(mean, std): the same values made per image, and the same
    random draws (``mean`` and ``std`` serve this output only).
    """
    if output not in TRANSFORM_OUTPUTS:
        raise ValueError(f"output must be one of {TRANSFORM_OUTPUTS}, got {output!r}")
    if output == "uint8":
        return SampleGeometry(train, resize, crop, flip=flip, flip_p=flip_p)
    steps = v2_geometry(train, resize, crop, flip, flip_p)
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def v2_geometry(train: bool, resize: int | None, crop: int | None, flip: bool = True, flip_p: float = 0.5) -> list:
    """The geometry as ``torchvision.transforms.v2`` steps over a tv_tensors sample: what
    ``SampleGeometry`` does with the same kernels and random draws (the per-image float path, and
    the reference its tests compare it with)."""
    steps: list = []
    if resize is not None:
        steps.append(v2.Resize(resize, antialias=True))
    if crop is not None:
        steps.append(v2.RandomCrop(crop) if train else v2.CenterCrop(crop))
    if train and flip:
        steps.append(HorizontalFlipWithParts(flip_p))
    return steps


def make_sample(
    image: torch.Tensor,
    box_xyxy: Sequence[float] | None,
    points: torch.Tensor,
    visible: torch.Tensor,
    part_boxes: torch.Tensor,
    flip_perm: Sequence[int],
) -> dict:
    """Wrap raw annotations (in original image pixels) as the tv_tensors dict described above.

    ``image`` is a uint8 [3, H, W] tensor; ``points`` [P, 2]; ``visible`` [P] bool;
    ``part_boxes`` [P, 4] XYXY with NaN rows where unknown; ``box_xyxy`` None if unknown.
    """
    h, w = image.shape[-2:]
    nan = float("nan")
    box = [list(box_xyxy)] if box_xyxy is not None else [[nan] * 4]
    pts = points.to(torch.float32).clone().reshape(-1, 2)
    pts[~visible.bool()] = nan
    return {
        "image": tv_tensors.Image(image),
        "box": tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(h, w), dtype=torch.float32),
        "points": tv_tensors.KeyPoints(pts, canvas_size=(h, w)),
        "part_boxes": tv_tensors.BoundingBoxes(
            part_boxes.to(torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(h, w)
        ),
        "flip_perm": tuple(int(i) for i in flip_perm),
    }


def finalize(sample: dict) -> dict:
    """Plain tensors after the pipeline: clamp boxes to the image, hide points that left it.

    Returns ``image`` [3, H, W] as the pipeline left it (uint8 from the standard one, float from
    one that normalises), ``box`` [4], ``parts`` [P, 3] (x, y, visible; invisible parts are all
    zero) and ``part_boxes`` [P, 4] (NaN where unknown).
    """
    image = sample["image"]
    h, w = image.shape[-2:]
    # a handful of numbers per sample: numpy does them without torch's per-operation overhead,
    # with the same float32 comparisons and clamps
    limits = np.array([w, h, w, h], dtype=np.float32)

    def clamp_boxes(b) -> torch.Tensor:
        b = _array(b).reshape(-1, 4)
        return torch.from_numpy(np.clip(b, np.float32(0), limits))  # NaN stays NaN

    pts = _array(sample["points"]).reshape(-1, 2)
    with np.errstate(invalid="ignore"):  # NaN compares False: an invisible part is outside
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    parts = np.zeros((len(pts), 3), dtype=np.float32)
    parts[inside, :2] = pts[inside]
    parts[inside, 2] = 1.0
    return {
        "image": image.as_subclass(torch.Tensor),
        "box": clamp_boxes(sample["box"])[0],
        "parts": torch.from_numpy(parts),
        "part_boxes": clamp_boxes(sample["part_boxes"]),
    }


def _array(t) -> np.ndarray:
    """A (tv_)tensor's values as a float32 numpy array (shares its memory: read, never written)."""
    return t.as_subclass(torch.Tensor).detach().to(torch.float32).numpy()
