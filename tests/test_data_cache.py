"""data.cache: splits kept in memory give exactly the items read from disk, decoding each file once."""
from __future__ import annotations

import pytest
import torch

from raccnn.config import resolve_config
from raccnn.data import CUBDataset, FolderDataset, build_transforms
from raccnn.data.build import build_dataset, cache_mode
from raccnn.data.cache import ItemCache
from test_data_cub import _write_folder, write_cub


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(-1), b[k].nan_to_num(-1)) for k in a)


def test_item_cache_decodes_and_builds_as_its_mode_says():
    calls = {"decode": 0, "build": 0}

    def decode(i):
        calls["decode"] += 1
        return torch.full((1, 2, 2), i, dtype=torch.uint8)

    def build(i, image):
        calls["build"] += 1
        return {"image": image.float() + torch.rand(1)}  # random: a second build would differ

    none = ItemCache("none", 3, decode, build)
    none[1], none[1]
    assert calls == {"decode": 2, "build": 2} and none.nbytes() == 0

    calls.update(decode=0, build=0)
    decoded = ItemCache("decoded", 3, decode, build)
    assert calls == {"decode": 3, "build": 0}  # filled when opened
    assert decoded[2]["image"].floor().eq(2).all() and calls == {"decode": 3, "build": 1}
    assert decoded.nbytes() == 3 * 4  # three uint8 1x2x2 images

    calls.update(decode=0, build=0)
    samples = ItemCache("samples", 3, decode, build)
    first = samples[0]
    first["image"].fill_(99)  # a caller editing its copy
    assert torch.equal(samples[0]["image"], samples[0]["image"]) and samples[0]["image"].lt(99).all()
    assert calls == {"decode": 3, "build": 3} and samples.nbytes() == 3 * 4 * 4  # float32

    with pytest.raises(ValueError, match="cache mode"):
        ItemCache("disk", 3, decode, build)


def test_cub_splits_from_memory_equal_the_files(tmp_path):
    write_cub(tmp_path)
    test_tf = build_transforms(False, 40, 32)
    for split in ("trainval", "test"):
        disk = CUBDataset(tmp_path, split, test_tf, skip_unreadable=True)
        kept = CUBDataset(tmp_path, split, test_tf, skip_unreadable=True, cache="samples")
        assert len(disk) == len(kept) and all(_equal(disk[i], kept[i]) for i in range(len(disk)))
    # a random transform on kept decoded images draws the same numbers as on the files
    train_tf = build_transforms(True, 40, 32)
    disk = CUBDataset(tmp_path, "trainval", train_tf)
    kept = CUBDataset(tmp_path, "trainval", train_tf, cache="decoded")
    for i in range(len(disk)):
        torch.manual_seed(i)
        a = disk[i]
        torch.manual_seed(i)
        assert _equal(a, kept[i])


def test_folder_dataset_from_memory_equals_the_files(tmp_path):
    _write_folder(tmp_path, 3)
    tf = build_transforms(False, 24, 24)
    disk, kept = FolderDataset(tmp_path, "trainval", tf), FolderDataset(tmp_path, "trainval", tf, cache="samples")
    assert all(_equal(disk[i], kept[i]) for i in range(len(disk)))
    assert kept.cache.nbytes() > len(kept) * 3 * 24 * 24  # the uint8 images at least
    # DataLoader workers forked after the dataset opened read the same kept samples
    batch = next(iter(torch.utils.data.DataLoader(kept, batch_size=len(kept), num_workers=1)))
    assert torch.equal(batch["image"], torch.stack([disk[i]["image"] for i in range(len(disk))]))


def _config(**data) -> dict:
    return resolve_config({"data": data})


def test_data_cache_setting_chooses_the_mode_per_split():
    fgsynth = _config()
    assert fgsynth["data"]["cache"] == "auto"
    assert [cache_mode(fgsynth, s) for s in ("train", "trainval", "val", "test")] == \
        ["decoded", "decoded", "samples", "samples"]
    assert cache_mode(_config(dataset="cub"), "train") == "none"
    assert cache_mode(_config(dataset="cub", cache="memory"), "test") == "samples"
    assert cache_mode(_config(cache="none"), "train") == "none"


def test_build_dataset_passes_the_mode(tmp_path):
    write_cub(tmp_path)
    cfg = _config(dataset="cub", root=str(tmp_path), cache="memory", resize=40, crop=32, skip_unreadable=True)
    assert build_dataset(cfg, "test").cache.mode == "samples"
    assert build_dataset(cfg, "train").cache.mode == "decoded"
