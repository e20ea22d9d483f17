"""The standard pipeline's geometry (resize, crop, flip) as one transform on plain tensors.

:func:`raccnn.data.transforms.build_transforms` returns :class:`SampleGeometry` for the uint8
output a DataLoader worker hands over. It calls the kernels of ``torchvision.transforms.v2.functional``
(``resize_image``, ``resize_bounding_boxes``, ``crop_keypoints``, ``horizontal_flip_*``...) directly,
the same kernels that ``v2.Compose([Resize, RandomCrop or CenterCrop, HorizontalFlipWithParts])``
dispatches to, with the same arguments, so every image, box and point is the one that pipeline
gives; it skips what the pipeline spends per sample around them (flattening the sample dict,
dispatching each transform on each entry's type, re-wrapping every result as a tv_tensor), runs the
box kernels once for the object box and the part boxes together (they work row by row), and skips
the kernels of entries that hold nothing (a dataset without part annotations).

The random crop's offsets and the flip's decision are drawn with the same calls, in the same order,
as ``v2.RandomCrop`` and :class:`~raccnn.data.transforms.HorizontalFlipWithParts`, so a seed gives
the same augmentations either way. Only that order is written here; the geometry is torchvision's.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

XYXY = tv_tensors.BoundingBoxFormat.XYXY

BOX_KEYS = ("box", "part_boxes")


def _plain(x: Tensor) -> Tensor:
    return x.as_subclass(Tensor) if type(x) is not Tensor else x


class SampleGeometry:
    """Resize(``resize``, shorter side, bilinear, antialias) -> RandomCrop(``crop``) when ``train``,
    CenterCrop(``crop``) otherwise -> horizontal flip with probability ``flip_p`` when ``train`` and
    ``flip`` (the part slots swapped with ``sample["flip_perm"]``); ``None`` skips a step.

    Called on the sample dict of :func:`~raccnn.data.transforms.make_sample` (tv_tensors or plain
    tensors: ``image``, ``box`` [1, 4] and ``part_boxes`` [P, 4] XYXY, ``points`` [P, 2],
    ``flip_perm``) it returns a dict of plain tensors for :func:`~raccnn.data.transforms.finalize`;
    called on an image alone it returns the image.
    """

    def __init__(self, train: bool, resize: int | None, crop: int | None, flip: bool = True,
                 flip_p: float = 0.5):
        self.train = train
        self.resize = resize
        self.crop = crop
        self.flip_p = flip_p if train and flip else None

    def __call__(self, sample):
        if not isinstance(sample, dict):
            return self._image_only(sample)
        image = _plain(sample["image"])
        canvas = tuple(image.shape[-2:])
        # the object box and the part boxes go through the box kernels as one tensor: they work row by row
        rows = {k: _plain(sample[k]).reshape(-1, 4) for k in BOX_KEYS if k in sample}
        boxes = torch.cat(list(rows.values())) if rows else torch.zeros(0, 4)
        points = _plain(sample["points"]) if "points" in sample else torch.zeros(0, 2)
        has_boxes, has_points = boxes.numel() > 0, points.numel() > 0  # none: their kernels are skipped

        if self.resize is not None:
            size = [self.resize]
            image = F.resize_image(image, size, antialias=True)
            if has_boxes:
                boxes = F.resize_bounding_boxes(boxes, canvas, size, format=XYXY)[0]
            if has_points:
                points = F.resize_keypoints(points, size, canvas)[0]
            canvas = tuple(image.shape[-2:])

        if self.crop is not None:
            top, left = self._crop_anchor(canvas)
            c = self.crop
            if self.train:
                image = F.crop_image(image, top, left, c, c)
            else:
                image = F.center_crop_image(image, [c, c])  # pads an image smaller than the crop
            if has_boxes:
                boxes = F.crop_bounding_boxes(boxes, XYXY, top, left, c, c)[0]
            if has_points:
                points = F.crop_keypoints(points, top, left, c, c)[0]
            canvas = (c, c)

        flipped = self.flip_p is not None and self._flips()
        if flipped:
            image = F.horizontal_flip_image(image)
            if has_boxes:
                boxes = F.horizontal_flip_bounding_boxes(boxes, XYXY, canvas)
            if has_points:
                points = F.horizontal_flip_keypoints(points, canvas)

        out = dict(sample)
        out["image"] = image
        if "points" in sample:
            out["points"] = points
        start = 0
        for k, b in rows.items():
            out[k], start = boxes[start: start + len(b)].reshape(sample[k].shape), start + len(b)
        perm = list(sample.get("flip_perm", ())) if flipped else []
        if perm:  # slot "left eye" now holds the right one's point: re-order the part slots
            for k in ("points", "part_boxes"):
                if k in out and len(out[k]):
                    out[k] = out[k][perm]
        return out

    def _crop_anchor(self, canvas: tuple[int, int]) -> tuple[int, int]:
        """(top, left) of the crop: ``v2.CenterCrop``'s rounding, or ``v2.RandomCrop``'s draws (a
        ``randint`` for the top, then one for the left, each only where the image is larger)."""
        h, w = canvas
        c = self.crop
        if not self.train:
            return int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
        if h < c or w < c:
            raise ValueError(f"Required crop size {(c, c)} is larger than input image size {(h, w)}.")
        top = int(torch.randint(0, h - c + 1, size=())) if h > c else 0
        left = int(torch.randint(0, w - c + 1, size=())) if w > c else 0
        return top, left

    def _flips(self) -> bool:
        """HorizontalFlipWithParts' decision; on a flip, the second number that its inner
        ``v2.RandomHorizontalFlip(p=1.0)`` draws is drawn too, so later samples get the same draws."""
        if self.flip_p <= 0 or torch.rand(1).item() >= self.flip_p:
            return False
        torch.rand(1)
        return True

    def _image_only(self, image: Tensor) -> Tensor:
        return self({"image": image})["image"]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={self.train}, resize={self.resize}, crop={self.crop}, "
                f"flip_p={self.flip_p})")
