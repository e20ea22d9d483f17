"""FG-Synth: determinism, loader compatibility, geometry of the annotations, speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from raccnn.data import CUBDataset, DISCRIMINATIVE_PART, DatasetError, build_transforms, ensure_fgsynth, generate_fgsynth
from raccnn.data.synthetic import COARSE, FINE

TINY = dict(classes=3, images_per_class=6, size=96, seed=7)
ANNOTATIONS = [
    "images.txt", "train_test_split.txt", "classes.txt", "image_class_labels.txt",
    "bounding_boxes.txt", "parts/parts.txt", "parts/part_locs.txt", "parts/part_boxes.txt",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("fgsynth")
    t0 = time.perf_counter()
    d = generate_fgsynth(out, **TINY)
    return out, d, time.perf_counter() - t0


def test_generation_is_fast(tiny):
    assert tiny[2] < 5.0


def test_same_seed_same_bytes(tiny, tmp_path):
    _, d, _ = tiny
    d2 = generate_fgsynth(tmp_path, **TINY)
    for name in ANNOTATIONS:
        assert (d / name).read_bytes() == (d2 / name).read_bytes(), name
    imgs = sorted(p.relative_to(d) for p in (d / "images").rglob("*.png"))
    assert len(imgs) == 18
    assert all((d / p).read_bytes() == (d2 / p).read_bytes() for p in imgs)
    d3 = generate_fgsynth(tmp_path / "other", **dict(TINY, seed=8))
    assert (d / "bounding_boxes.txt").read_bytes() != (d3 / "bounding_boxes.txt").read_bytes()


def test_loader_reads_it(tiny):
    out, _, _ = tiny
    ds = CUBDataset(out, split="trainval", transform=build_transforms(True, 96, 96))
    assert len(ds) == 9 and ds.num_classes == 3 and DISCRIMINATIVE_PART in ds.part_names
    assert len(CUBDataset(out, split="test")) == 9
    s = ds[0]
    assert s["image"].shape == (3, 96, 96)
    assert torch.isfinite(s["part_boxes"]).all() and (s["parts"][:, 2] == 1).all()


def test_part_boxes_inside_image_and_object(tiny):
    out, _, _ = tiny
    size = TINY["size"]
    for split in ("trainval", "test"):
        ds = CUBDataset(out, split=split)
        for i in range(len(ds)):
            a = ds.annotation(i)
            x, y, w, h = a["box_xywh"]
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size
            pb = a["part_boxes_xywh"]
            assert np.isfinite(pb).all() and (pb[:, 2:] > 0).all()
            assert (pb[:, 0] >= x).all() and (pb[:, 1] >= y).all()
            assert (pb[:, 0] + pb[:, 2] <= x + w).all() and (pb[:, 1] + pb[:, 3] <= y + h).all()
            # part points are the part-box centres
            assert np.allclose(a["parts"][:, :2], pb[:, :2] + pb[:, 2:] / 2, atol=0.051)
            # the discriminative part covers a few percent of the image
            k = ds.part_names.index(DISCRIMINATIVE_PART)
            assert 0.01 < pb[k, 2] * pb[k, 3] / size**2 < 0.06


def test_patterns_survive_horizontal_flip():
    # flipping x must give the same texture up to a shift (the phase is random anyway)
    y, x = np.mgrid[0:16, 0:16]
    for name, fn in {**COARSE, **FINE}.items():
        m = fn(x, y)
        assert any(np.array_equal(m[:, ::-1], fn(x + k, y)) for k in range(8)), name


def test_ensure_reuses_complete_set_and_refuses_foreign_folder(tiny, tmp_path):
    out, d, _ = tiny
    stamp = (d / ".fgsynth_complete").stat().st_mtime_ns
    assert ensure_fgsynth(out, **TINY) == d
    assert (d / ".fgsynth_complete").stat().st_mtime_ns == stamp
    (tmp_path / "CUB_200_2011").mkdir()
    with pytest.raises(DatasetError, match="not an FG-Synth folder"):
        generate_fgsynth(tmp_path, **TINY)
