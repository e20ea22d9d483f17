"""SampleGeometry (the standard uint8 pipeline) against the v2.Compose it replaces: the same pixels,
boxes, points and part boxes, and the same random draws, for a seed."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from raccnn.data import CUBDataset, FolderDataset, build_transforms
from raccnn.data.geometry import SampleGeometry
from raccnn.data.standin import write_cub_standin
from raccnn.data.transforms import finalize, make_sample, v2_geometry


def v2_pipeline(train, resize, crop, flip=True, flip_p=0.5):
    """The uint8 pipeline as the v2 transforms compose it."""
    return v2.Compose(v2_geometry(train, resize, crop, flip, flip_p) or [v2.Identity()])


@pytest.fixture(scope="module")
def cub_samples(tmp_path_factory):
    """Stand-in CUB images (JPEGs around 250 x 188) with their boxes and visible/invisible parts, and
    a part box around each part point (the stand-in has none), in the pixels of the files."""
    root = tmp_path_factory.mktemp("cub")
    write_cub_standin(root, classes=2, images_per_class=6, size=(250, 188))
    ds = CUBDataset(root, split="trainval", transform=None, val_fraction=0.25)
    samples = []
    for i in range(len(ds)):
        a = ds.annotation(i)
        x, y, w, h = a["box_xywh"]
        parts = torch.from_numpy(a["parts"]).float()
        part_boxes = torch.cat([parts[:, :2] - 15, parts[:, :2] + 25], dim=1)
        part_boxes[parts[:, 2] == 0] = float("nan")
        samples.append((ds._decode(i), (x, y, x + w, y + h), parts[:, :2], parts[:, 2] > 0, part_boxes,
                        ds.flip_perm))
    assert ds.flip_perm != tuple(range(len(ds.flip_perm)))  # left/right parts to swap on a flip
    return samples


def _run(transform, samples, seed):
    torch.manual_seed(seed)
    out = [finalize(transform(make_sample(*s))) for s in samples]
    return out, torch.rand(4)  # the generator's state after the samples


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        same = torch.equal(a[k], b[k]) if k == "image" else torch.equal(a[k].nan_to_num(-7), b[k].nan_to_num(-7))
        assert same and torch.equal(a[k].isnan(), b[k].isnan()), k


@pytest.mark.parametrize("args", [
    (True, 160, 128), (True, 160, 128, True, 1.0), (True, 160, 128, False), (True, 140, None, True, 1.0),
    (True, None, 150), (False, 160, 128), (False, 100, 128), (False, None, None),
])
def test_annotations_and_draws_equal_the_v2_pipeline(cub_samples, args):
    """Train (random crop, flip at 0.5, always, never) and test geometry; an eval crop larger than the
    image (padded); the random draws leave the generator where the v2 pipeline leaves it."""
    transform = build_transforms(*args)
    assert isinstance(transform, SampleGeometry)
    for seed in (0, 1):
        new, new_next = _run(transform, cub_samples, seed)
        old, old_next = _run(v2_pipeline(*args), cub_samples, seed)
        for a, b in zip(new, old):
            _assert_same(a, b)
        assert torch.equal(new_next, old_next)


def test_flip_swaps_part_slots_like_the_v2_pipeline(cub_samples):
    flipped = _run(build_transforms(True, 160, None, flip_p=1.0), cub_samples[:1], 0)[0][0]
    kept = _run(build_transforms(True, 160, None, flip=False), cub_samples[:1], 0)[0][0]
    perm = list(cub_samples[0][5])
    w = kept["image"].shape[-1]
    assert torch.equal(flipped["image"], kept["image"].flip(-1))
    visible = kept["parts"][perm][:, 2] > 0
    assert visible.any() and torch.equal(flipped["parts"][visible, 0], w - 1 - kept["parts"][perm][visible, 0])


def test_image_alone_and_a_dataset_without_annotations(tmp_path):
    """tools/predict.py calls the transform on an image; FolderDataset's samples have no parts."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for k in range(3):
            Image.effect_mandelbrot((130 + 9 * k, 97), (-2, -1.2, 1, 1.2), 40 + k).convert("RGB").save(
                tmp_path / c / f"{k}.jpg")
    image = tv_tensors.Image(torch.randint(0, 256, (3, 97, 130), dtype=torch.uint8))
    for args in [(False, 96, 80), (True, 96, 80, True, 1.0)]:
        torch.manual_seed(0)
        new = build_transforms(*args)(image)
        torch.manual_seed(0)
        old = v2_pipeline(*args)(image) if not args[0] else v2.Compose(v2_pipeline(*args).transforms[:2])(image)
        assert type(new) is torch.Tensor and torch.equal(new if not args[0] else new.flip(-1), old)
        outs = []
        for tf in (build_transforms(*args), v2_pipeline(*args)):
            torch.manual_seed(2)
            ds = FolderDataset(tmp_path, transform=tf)
            outs.append([ds[i] for i in range(len(ds))])
        for a, b in zip(*outs):
            _assert_same(a, b)


def test_finalize_clamps_boxes_keeps_unknown_and_hides_points_off_the_image():
    nan, inf = float("nan"), float("inf")
    sample = {"image": torch.zeros(3, 10, 20, dtype=torch.uint8),
              "box": torch.tensor([[-3.0, 2.5, 25.0, 11.0]]),
              "points": torch.tensor([[19.0, 9.0], [19.5, 0.0], [-0.5, 4.0], [nan, nan], [inf, 3.0], [0.0, 0.0]]),
              "part_boxes": torch.tensor([[1.0, -1.0, 30.0, 4.0], [nan, nan, nan, nan]])}
    out = finalize(sample)
    assert torch.equal(out["box"], torch.tensor([0.0, 2.5, 20.0, 10.0]))
    assert torch.equal(out["part_boxes"][0], torch.tensor([1.0, 0.0, 20.0, 4.0])) and out["part_boxes"][1].isnan().all()
    # pixel indices: x in [0, 19], y in [0, 9]; an invisible (NaN) or infinite point is hidden as all zeros
    assert torch.equal(out["parts"], torch.tensor([[19.0, 9.0, 1.0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0],
                                                   [0.0, 0.0, 1.0]]))
    assert all(out[k].dtype == torch.float32 for k in ("box", "parts", "part_boxes"))
