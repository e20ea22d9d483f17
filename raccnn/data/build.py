"""Datasets from a resolved config: the one place that maps ``data.*`` keys to dataset objects."""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.backbones import input_normalization
from .aircraft import FGVCAircraft
from .cache import ItemCache
from .cars import StanfordCars
from .cub import CUBDataset
from .dogs import StanfordDogs
from .folder import FolderDataset
from .nabirds import NABirds
from .synthetic import ensure_fgsynth, fgsynth_root, texture_scale_for
from .transforms import build_transforms


# read from their publishers' files under data.root (data/annotated.py)
PUBLISHED = {"stanford_dogs": StanfordDogs, "stanford_cars": StanfordCars, "fgvc_aircraft": FGVCAircraft,
             "nabirds": NABirds}
DATASETS = ("fgsynth", "cub", "folder", *PUBLISHED)
# data.cache: "memory" keeps every split in memory (data/cache.py): the training splits' images
# decoded, the evaluation splits' finished samples. "auto" does so for FG-Synth, whose default
# splits take 88 MiB that way (uint8 samples); CUB at its own size would take about 6.6 GB decoded and is read from disk.
CACHE_SETTINGS = ("auto", "memory", "none")


def cache_mode(cfg: dict, split: str) -> str:
    """The ItemCache mode of one split under data.cache."""
    d = cfg["data"]
    if d["cache"] == "none" or (d["cache"] == "auto" and d["dataset"] != "fgsynth"):
        return "none"
    return "decoded" if split in ("train", "trainval") else "samples"


def scale1_size(cfg: dict) -> float:
    """The side, in px, that a whole square stored image has at scale 1: resized to data.resize,
    cropped to data.crop, shrunk to model.input_sizes[0]."""
    return cfg["model"]["input_sizes"][0] * cfg["data"]["resize"] / cfg["data"]["crop"]


def data_root(cfg: dict) -> Path:
    """The folder the dataset is read from (FG-Synth's variant has its own, ``fgsynth_root``)."""
    d = cfg["data"]
    return fgsynth_root(d["root"], d["synth"]["distractor"]) if d["dataset"] == "fgsynth" else Path(d["root"])


def prepare_data(cfg: dict) -> Path:
    """The dataset root; FG-Synth is generated there first when it is absent (a set of another
    setting there is refused, never written over)."""
    d = cfg["data"]
    if d["dataset"] == "fgsynth":
        synth = {k: v for k, v in d["synth"].items() if k != "check"}
        return ensure_fgsynth(fgsynth_root(d["root"], synth["distractor"]), **synth,
                              texture_scale=texture_scale_for(synth["size"], scale1_size(cfg)))
    return Path(d["root"])


def build_dataset(cfg: dict, split: str, root: Path | None = None):
    """One split ("train", "val", "trainval" or "test") with its transforms (training
    augmentation only on the train splits)."""
    d = cfg["data"]
    root = root if root is not None else data_root(cfg)
    train = split in ("train", "trainval")
    mean, std = input_normalization(cfg)
    transform = build_transforms(train, d["resize"], d["crop"], flip=d["flip"], mean=mean, std=std)
    kwargs = dict(split=split, transform=transform, val_fraction=d["val_fraction"], split_seed=d["split_seed"],
                  skip_unreadable=d["skip_unreadable"], verify=d["verify_images"], max_images=d["max_images"],
                  cache=cache_mode(cfg, split))
    if d["dataset"] == "folder":
        return FolderDataset(root, **kwargs)
    if d["dataset"] == "fgvc_aircraft":
        return FGVCAircraft(root, label_level=d["label_level"], **kwargs)
    if d["dataset"] in PUBLISHED:
        return PUBLISHED[d["dataset"]](root, **kwargs)
    return CUBDataset(root, **kwargs)


class NoSplit(torch.utils.data.Dataset):
    """The validation split under ``data.val_fraction: 0``: no images, the classes and parts of the
    training split it would have been carved from."""

    def __init__(self, of):
        self.classes, self.part_names, self.num_classes = of.classes, of.part_names, of.num_classes
        self.cache = ItemCache("none", 0, None, None)

    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError(f"the validation split is empty (data.val_fraction 0), no item {i}")


def build_datasets(cfg: dict, splits=("train", "val", "test")) -> dict:
    """Prepare the data and open each split (all validation happens here, before training); with
    ``data.val_fraction: 0`` the validation split is a ``NoSplit``."""
    root = prepare_data(cfg)
    datasets = {split: build_dataset(cfg, split, root) for split in splits
                if split != "val" or cfg["data"]["val_fraction"] > 0}
    if "val" in splits and "val" not in datasets:
        datasets["val"] = NoSplit(datasets.get("train") or build_dataset(cfg, "train", root))
    return {split: datasets[split] for split in splits}
