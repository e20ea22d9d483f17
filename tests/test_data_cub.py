"""CUB-format loader, transforms, folder dataset and stratified split on small fixtures."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from raccnn.data import (
    CUBDataset,
    DatasetError,
    FolderDataset,
    build_transforms,
    flip_permutation,
    stratified_split,
)

NAN = float("nan")
PART_NAMES = ["left eye", "right eye", "beak"]


def _noise(w, h, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_cub(root: Path, cut: bool = False) -> Path:
    """A 9-image CUB_200_2011 folder: 3 classes, odd image formats; with ``cut``, the test image
    ``003.Gamma/truncated.jpg`` loses its second half."""
    d = root / "CUB_200_2011"
    (d / "parts").mkdir(parents=True)
    classes = ["001.Alpha", "002.Beta", "003.Gamma"]
    for c in classes:
        (d / "images" / c).mkdir(parents=True)
    # (relative path, class id, train flag, writer)
    entries = [
        ("001.Alpha/rgb.jpg", 1, 1, lambda p: Image.fromarray(_noise(200, 100)).save(p, "JPEG")),
        ("002.Beta/gray.jpg", 2, 1, lambda p: Image.fromarray(_noise(80, 60)[..., 0], "L").save(p, "JPEG")),
        ("003.Gamma/cmyk.jpg", 3, 1, lambda p: Image.new("CMYK", (70, 50), (0, 255, 255, 0)).save(p, "JPEG")),
        ("001.Alpha/png_named.jpg", 1, 0, lambda p: Image.new("RGB", (64, 48), (255, 0, 0)).save(p, "PNG")),
        ("002.Beta/palette.png", 2, 0, lambda p: Image.fromarray(_noise(40, 40)).convert("P").save(p)),
        ("003.Gamma/truncated.jpg", 3, 0, None),
        ("001.Alpha/b.jpg", 1, 1, lambda p: Image.fromarray(_noise(50, 50, 1)).save(p, "JPEG")),
        ("002.Beta/b.jpg", 2, 1, lambda p: Image.fromarray(_noise(50, 50, 2)).save(p, "JPEG")),
        ("003.Gamma/b.jpg", 3, 1, lambda p: Image.fromarray(_noise(50, 50, 3)).save(p, "JPEG")),
    ]
    for rel, _, _, writer in entries:
        if writer is None:
            Image.fromarray(_noise(64, 64)).save(d / "images" / rel, "JPEG")
            if cut:
                data = (d / "images" / rel).read_bytes()
                (d / "images" / rel).write_bytes(data[: len(data) // 2])
        else:
            writer(d / "images" / rel)
    n = len(entries)
    (d / "images.txt").write_text("".join(f"{i} {e[0]}\n" for i, e in enumerate(entries, 1)))
    (d / "image_class_labels.txt").write_text("".join(f"{i} {e[1]}\n" for i, e in enumerate(entries, 1)))
    (d / "train_test_split.txt").write_text("".join(f"{i} {e[2]}\n" for i, e in enumerate(entries, 1)))
    (d / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(classes, 1)))
    boxes = ["1 20.0 10.0 60.0 40.0"] + [f"{i} 1.0 2.0 10.0 12.0" for i in range(2, n + 1)]
    (d / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (d / "parts" / "parts.txt").write_text("".join(f"{k} {p}\n" for k, p in enumerate(PART_NAMES, 1)))
    locs = ["1 1 70.0 30.0 1", "1 2 110.0 60.0 1", "1 3 150.0 50.0 1"]
    locs += [f"{i} {k} 0.0 0.0 0" for i in range(2, n + 1) for k in (1, 2, 3)]
    (d / "parts" / "part_locs.txt").write_text("\n".join(locs) + "\n")
    # part boxes (x y w h) for image 1 only; "right eye" unknown
    (d / "parts" / "part_boxes.txt").write_text("1 1 60 20 20 20\n1 3 140 40 20 20\n")
    return d


@pytest.fixture()
def cub(tmp_path):
    write_cub(tmp_path)
    return tmp_path


def _same(a: torch.Tensor, b) -> bool:
    return torch.allclose(a, torch.as_tensor(b, dtype=torch.float32), atol=1e-4, equal_nan=True)


def _find(ds, name):
    return next(i for i in range(len(ds)) if ds.annotation(i)["path"].endswith(name))


# ----------------------------------------------------------------------------- loading
def test_metadata_and_raw_annotation(cub):
    ds = CUBDataset(cub, split="trainval")
    assert ds.classes == ["001.Alpha", "002.Beta", "003.Gamma"] and ds.num_classes == 3
    assert ds.part_names == PART_NAMES
    assert len(ds) == 6 and ds.targets == [0, 1, 2, 0, 1, 2]
    ann = ds.annotation(0)
    assert ann["label"] == 0 and ann["box_xywh"] == (20.0, 10.0, 60.0, 40.0)
    assert ann["parts"].tolist() == [[70, 30, 1], [110, 60, 1], [150, 50, 1]]
    assert np.isnan(ann["part_boxes_xywh"][1]).all()
    assert len(CUBDataset(cub, split="test")) == 3


def test_every_format_decodes_to_rgb(cub):
    ds = CUBDataset(cub, split="trainval")
    for i in range(len(ds)):
        s = ds[i]
        assert s["image"].dtype == torch.uint8 and s["image"].shape[0] == 3
        assert s["parts"].shape == (3, 3) and s["part_boxes"].shape == (3, 4)
        assert s["label"].dtype == torch.int64 and s["index"].item() == i
    gray = ds[_find(ds, "gray.jpg")]["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    test = CUBDataset(cub, split="test")
    red = test[_find(test, "png_named.jpg")]["image"]  # lossless solid red
    assert red[:, 10, 10].tolist() == [255, 0, 0]
    assert test[_find(test, "palette.png")]["image"].shape == (3, 40, 40)


@pytest.mark.parametrize("mode", ["header", "full"])
def test_a_truncated_test_image_fails_when_the_training_split_opens(tmp_path, caplog, mode):
    write_cub(tmp_path, cut=True)
    with pytest.raises(DatasetError, match=r"1 unreadable image\(s\) .*truncated.jpg: .*skip_unreadable"):
        CUBDataset(tmp_path, split="train", verify=mode)
    with caplog.at_level(logging.WARNING):
        kept = CUBDataset(tmp_path, split="test", skip_unreadable=True, verify=mode)
        train = CUBDataset(tmp_path, split="trainval", skip_unreadable=True, verify=mode)
    assert len(kept) == 2 and len(train) == 6  # only the test split loses an image
    assert all(not kept.annotation(i)["path"].endswith("truncated.jpg") for i in range(len(kept)))
    assert "skipping 1 unreadable" in caplog.text and "truncated.jpg" in caplog.text
    test = CUBDataset(tmp_path, split="test", verify="none")  # unchecked: it fails when read
    with pytest.raises(DatasetError, match="truncated.jpg"):
        test[_find(test, "truncated.jpg")]


def test_the_error_names_a_few_bad_files_and_counts_the_rest(tmp_path):
    d = write_cub(tmp_path)
    names = [line.split()[1] for line in (d / "images.txt").read_text().splitlines()]
    for rel in names:
        (d / "images" / rel).write_bytes(b"not an image")
    with pytest.raises(DatasetError) as err:
        CUBDataset(tmp_path, split="train")
    msg = str(err.value)
    assert msg.startswith("9 unreadable image(s)") and msg.count("/CUB_200_2011/images/") == 5  # five shown
    assert "and 4 more" in msg and "\n" not in msg


def test_the_check_is_cached_and_a_changed_file_is_checked_again(tmp_path, monkeypatch):
    from raccnn.data import verify
    d = write_cub(tmp_path)
    calls = []
    real = verify.check_image
    monkeypatch.setattr(verify, "check_image", lambda p, full: calls.append(p) or real(p, full))
    CUBDataset(tmp_path, split="train")
    assert len(calls) == 9 and (d / verify.CACHE_NAME).is_file()
    CUBDataset(tmp_path, split="val")
    CUBDataset(tmp_path, split="test")
    assert len(calls) == 9  # both answered from the cache
    bad = d / "images" / "003.Gamma" / "truncated.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # size and mtime change: the cache no longer matches
    with pytest.raises(DatasetError, match="truncated.jpg"):
        CUBDataset(tmp_path, split="train")
    assert len(calls) == 18


def test_a_read_only_dataset_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    from raccnn.data import verify
    d = write_cub(tmp_path / "data")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(verify, "atomic_open", _refuse_inside(d, verify.atomic_open))
    CUBDataset(tmp_path / "data", split="train")
    assert not (d / verify.CACHE_NAME).exists()
    assert len(list((tmp_path / "cache" / "raccnn").glob("image_check_*.json"))) == 1


def _refuse_inside(folder, real):
    def opener(path, *args, **kwargs):
        if str(path).startswith(str(folder)):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)
    return opener


def test_a_jpeg_with_bytes_after_its_end_marker_is_decoded_and_accepted(tmp_path):
    from raccnn.data.verify import check_image
    p = tmp_path / "padded.jpg"
    Image.fromarray(_noise(40, 30)).save(p, "JPEG")
    p.write_bytes(p.read_bytes() + b"\0" * 4096)
    assert check_image(p, full=False) == (40, 30)
    p.write_bytes(p.read_bytes()[:300])
    assert isinstance(check_image(p, full=False), str)


def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    from raccnn.data.images import load_rgb
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1024).astype(np.uint16)  # 0 .. 64512
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb = np.asarray(load_rgb(tmp_path / "g16.png"))
    expect = np.rint(ramp / 257.0).astype(np.uint8)
    assert (rgb[..., 0] == expect).all() and (rgb[..., 1] == expect).all()
    assert (rgb == 255).mean() < 0.02  # PIL's own convert makes 98 % of this ramp white
    Image.fromarray(np.full((4, 4), 200, np.int32)).save(tmp_path / "i32.tif")
    assert (np.asarray(load_rgb(tmp_path / "i32.tif")) == 200).all()  # 8-bit values in mode "I" kept


@pytest.mark.parametrize("file, line, text", [
    ("bounding_boxes.txt", 3, "3 80.0 2.0 10.0 12.0"),         # starts right of the 80-pixel-wide image
    ("bounding_boxes.txt", 5, "5 1.0 -30.0 10.0 12.0"),         # ends above the image
    ("parts/part_boxes.txt", 2, "1 3 250 40 20 20"),            # part box beyond the 200-pixel width
])
def test_a_box_entirely_outside_its_image_is_refused_with_file_and_line(tmp_path, file, line, text):
    d = write_cub(tmp_path)
    lines = (d / file).read_text().splitlines()
    lines[line - 1] = text
    (d / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{file}, line {line}: .*entirely outside"):
        CUBDataset(tmp_path, split="train")


def test_a_box_partly_outside_its_image_is_kept(tmp_path):
    d = write_cub(tmp_path)
    lines = (d / "bounding_boxes.txt").read_text().splitlines()
    lines[2] = "3 60.0 -5.0 30.0 20.0"  # 70x50 image: overlaps its top-right corner
    (d / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    assert len(CUBDataset(tmp_path, split="trainval")) == 6


# ----------------------------------------------------------------------------- transforms
def test_exact_values_after_test_transform(cub):
    # 200x100 image -> Resize(50) = 100x50 (scale 0.5) -> CenterCrop(40): offset x=30, y=5
    ds = CUBDataset(cub, split="trainval", transform=build_transforms(False, resize=50, crop=40))
    s = ds[0]
    assert s["image"].shape == (3, 40, 40) and s["label"].item() == 0
    assert _same(s["box"], [0, 0, 10, 20])  # [10,5,40,25] - (30,5), clamped
    # left eye (70,30)->(5,10); right eye (110,60)->(25,25); beak (150,50)->(45,20) leaves the crop
    assert _same(s["parts"], [[5, 10, 1], [25, 25, 1], [0, 0, 0]])
    assert _same(s["part_boxes"], [[0, 5, 10, 15], [NAN] * 4, [40, 15, 40, 25]])


def test_exact_values_after_forced_flip(cub):
    flip = build_transforms(True, resize=50, crop=None, flip_p=1.0)
    keep = build_transforms(True, resize=50, crop=None, flip_p=0.0)
    s = CUBDataset(cub, split="trainval", transform=flip)[0]
    s0 = CUBDataset(cub, split="trainval", transform=keep)[0]
    assert torch.equal(s["image"], s0["image"].flip(-1))
    # resized: box [10,5,40,25]; W=100: boxes x -> 100 - x, points x -> 99 - x
    assert _same(s["box"], [60, 5, 90, 25])
    # eyes swap slots: slot "left eye" now holds the flipped right eye (55,30)->(44,30)
    assert _same(s["parts"], [[44, 30, 1], [64, 15, 1], [24, 25, 1]])
    assert _same(s["part_boxes"], [[NAN] * 4, [60, 10, 70, 20], [20, 20, 30, 30]])


def test_random_crop_moves_annotations_with_pixels(cub):
    torch.manual_seed(3)
    s = CUBDataset(cub, split="trainval", transform=build_transforms(True, 50, 40, flip=False))[0]
    full = CUBDataset(cub, split="trainval", transform=build_transforms(False, 50, None))[0]
    # find the crop offset from the pixels, then check the annotations moved by it
    offsets = [(dy, dx) for dy in range(11) for dx in range(61)
               if torch.equal(full["image"][:, dy:dy + 40, dx:dx + 40], s["image"])]
    assert len(offsets) == 1
    dy, dx = offsets[0]
    box = full["box"] - torch.tensor([dx, dy, dx, dy])
    assert _same(s["box"], [box[0].clamp(0, 40), box[1].clamp(0, 40), box[2].clamp(0, 40), box[3].clamp(0, 40)])
    for k in range(3):
        x, y = full["parts"][k, 0] - dx, full["parts"][k, 1] - dy
        inside = 0 <= x <= 39 and 0 <= y <= 39
        assert _same(s["parts"][k], [x, y, 1] if inside else [0, 0, 0])


def test_flip_permutation_from_names():
    names = ["back", "left eye", "left leg", "right eye", "right leg", "tail", "Left Wing", "Right Wing"]
    assert flip_permutation(names) == (0, 3, 4, 1, 2, 5, 7, 6)


def test_default_collate(cub):
    ds = CUBDataset(cub, split="trainval", transform=build_transforms(True, 32, 32))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert batch["image"].shape == (6, 3, 32, 32) and batch["parts"].shape == (6, 3, 3)


# ----------------------------------------------------------------------------- bad inputs
def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_missing_root_says_what_to_put_where(tmp_path):
    with pytest.raises(DatasetError, match=r"CUB_200_2011/images.txt.*download CUB-200-2011"):
        CUBDataset(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: (d / "bounding_boxes.txt").unlink(), r"missing annotation file .*bounding_boxes.txt"),
        (lambda d: _edit(d / "bounding_boxes.txt", "2 1.0 2.0 10.0 12.0", "2 1.0 oops 10.0"),
         r"bounding_boxes.txt, line 2: malformed line '2 1.0 oops 10.0'"),
        (lambda d: (d / "images" / "002.Beta" / "b.jpg").unlink(), r"missing on disk: .*002.Beta/b.jpg"),
        (lambda d: _edit(d / "image_class_labels.txt", "9 3", "9 7"),
         r"image_class_labels.txt: image 9 has class id 7, out of range 1..3"),
        (lambda d: _edit(d / "train_test_split.txt", "5 0\n", ""), r"image ids in .*train_test_split.txt .* missing \[5\]"),
        (lambda d: _edit(d / "bounding_boxes.txt", "3 1.0", "33 1.0"), r"bounding_boxes.txt .* unknown \[33\]"),
        (lambda d: _edit(d / "parts" / "part_locs.txt", "2 3 0.0", "2 4 0.0"), r"part_locs.txt: image 2 has part id 4"),
        (lambda d: _edit(d / "classes.txt", "3 003", "4 003"), r"classes.txt: class ids must be 1..3"),
        (lambda d: _edit(d / "images.txt", "2 002", "1 002"), r"images.txt: duplicate id 1"),
    ],
    ids=["missing-file", "malformed-line", "missing-image", "class-range", "ids-missing",
         "ids-unknown", "part-range", "class-gap", "duplicate-id"],
)
def test_bad_inputs_raise_one_clear_error(cub, mutate, pattern):
    mutate(cub / "CUB_200_2011")
    with pytest.raises(DatasetError, match=pattern):
        CUBDataset(cub, split="train")


def test_empty_split(cub):
    d = cub / "CUB_200_2011"
    d.joinpath("train_test_split.txt").write_text("".join(f"{i} 0\n" for i in range(1, 10)))
    with pytest.raises(DatasetError, match="split 'train' .* is empty"):
        CUBDataset(cub, split="train")


def test_dataset_without_parts_loads(cub):
    shutil.rmtree(cub / "CUB_200_2011" / "parts")
    ds = CUBDataset(cub, split="train", transform=build_transforms(False, 32, 32))
    assert ds.part_names == [] and ds[0]["parts"].shape == (0, 3)


# ----------------------------------------------------------------------------- folder dataset
def _write_folder(root: Path, per_class: int = 4) -> None:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(_noise(40, 30, j)).save(root / c / f"{j}.png")


def test_folder_train_test_layout(tmp_path):
    _write_folder(tmp_path / "train", 5)
    _write_folder(tmp_path / "test", 2)
    tf = build_transforms(False, 24, 24)
    tr = FolderDataset(tmp_path, "train", tf, val_fraction=0.2)
    va = FolderDataset(tmp_path, "val", tf, val_fraction=0.2)
    te = FolderDataset(tmp_path, "test", tf)
    assert tr.classes == ["cat", "dog"] and (len(tr), len(va), len(te)) == (8, 2, 4)
    s = tr[0]
    assert s["image"].shape == (3, 24, 24) and torch.isnan(s["box"]).all() and s["parts"].shape == (0, 3)
    assert next(iter(torch.utils.data.DataLoader(tr, batch_size=4)))["label"].shape == (4,)


def test_folder_single_layout_and_errors(tmp_path):
    _write_folder(tmp_path / "a", 5)
    te = FolderDataset(tmp_path / "a", "test", test_fraction=0.2)
    tv = FolderDataset(tmp_path / "a", "trainval", test_fraction=0.2)
    assert len(te) == 2 and len(tv) == 8
    assert not {te.annotation(i)["path"] for i in range(len(te))} & {tv.annotation(i)["path"] for i in range(len(tv))}
    (tmp_path / "a" / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class contains no images"):
        FolderDataset(tmp_path / "a", "train")
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset(tmp_path / "missing", "train")


def test_folder_images_in_subfolders_count_and_macos_resource_forks_are_skipped(tmp_path):
    _write_folder(tmp_path / "a", 4)
    for c in ("cat", "dog"):  # e.g. one subfolder per photo session, one of them nested deeper
        (tmp_path / "a" / c / "2019" / "march").mkdir(parents=True)
        Image.fromarray(_noise(40, 30, 7)).save(tmp_path / "a" / c / "2019" / "x.png")
        Image.fromarray(_noise(40, 30, 8)).save(tmp_path / "a" / c / "2019" / "march" / "y.png")
        (tmp_path / "a" / c / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
        (tmp_path / "a" / c / ".thumbs").mkdir()
        Image.fromarray(_noise(8, 8)).save(tmp_path / "a" / c / ".thumbs" / "0.png")
    splits = [FolderDataset(tmp_path / "a", s, test_fraction=0.25) for s in ("trainval", "test")]
    paths = sorted(Path(ds.annotation(i)["path"]).relative_to(tmp_path / "a") for ds in splits for i in range(len(ds)))
    assert [str(p) for p in paths] == [f"{c}/{name}" for c in ("cat", "dog")
                                       for name in ("0.png", "1.png", "2.png", "2019/march/y.png", "2019/x.png", "3.png")]
    nested = next(ds for ds in splits if any("march" in ds.annotation(i)["path"] for i in range(len(ds))))
    i = next(i for i in range(len(nested)) if "march" in nested.annotation(i)["path"])
    assert nested[i]["label"].item() == int("dog/" in nested.annotation(i)["path"])


def test_folder_unreadable_image_fails_at_open_or_is_skipped(tmp_path):
    _write_folder(tmp_path / "a", 5)
    victim = sorted((tmp_path / "a").rglob("*.*"))[0]
    victim.write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(DatasetError, match=rf"1 unreadable image\(s\) in {tmp_path / 'a'}: {victim}"):
        FolderDataset(tmp_path / "a", "train", test_fraction=0.2)
    kept = [FolderDataset(tmp_path / "a", s, test_fraction=0.2, skip_unreadable=True) for s in ("trainval", "test")]
    assert sum(len(ds) for ds in kept) == 9


# ----------------------------------------------------------------------------- split rule
def test_stratified_split_rule():
    labels = [0] * 10 + [1] * 3 + [2] * 1 + [3] * 20
    tr, va = stratified_split(labels, val_fraction=0.1, seed=0)
    assert (tr, va) == stratified_split(labels, val_fraction=0.1, seed=0)
    assert stratified_split(labels, 0.1, seed=1)[1] != va
    assert not set(tr) & set(va) and sorted(tr + va) == list(range(len(labels)))
    counts = {c: sum(labels[i] == c for i in va) for c in range(4)}
    assert counts == {0: 1, 1: 1, 2: 0, 3: 2}
    assert stratified_split(labels, 0.0, 0) == (list(range(len(labels))), [])
