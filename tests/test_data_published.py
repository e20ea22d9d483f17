"""Stanford Dogs, Stanford Cars, FGVC-Aircraft and NABirds read from their publishers' layouts, on the
stand-ins of raccnn/data/standin.py: split sizes, labels, names and boxes (the expected values follow
the stand-in writers' rules, worked out by hand), one clear error per missing file, and a tiny
training with the evaluation of the whole test split."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from conftest import TINY
from raccnn.config import ConfigError, load_config
from raccnn.data import DatasetError, FGVCAircraft, NABirds, StanfordCars, StanfordDogs
from raccnn.data.build import build_datasets
from raccnn.data.standin import (NABIRDS_PARTS, write_aircraft_standin, write_cars_standin, write_dogs_standin,
                                 write_nabirds_standin)

REPO = Path(__file__).resolve().parents[1]
WRITERS = {"stanford_dogs": write_dogs_standin, "stanford_cars": write_cars_standin,
           "fgvc_aircraft": write_aircraft_standin, "nabirds": write_nabirds_standin}
CLASSES = {"stanford_dogs": StanfordDogs, "stanford_cars": StanfordCars, "fgvc_aircraft": FGVCAircraft,
           "nabirds": NABirds}


def ids(ds) -> list[str]:
    return [r.image_id for r in ds.records]


# ----------------------------------------------------------------------------- Stanford Dogs
def test_dogs_official_split_labels_names_and_largest_box(tmp_path):
    write_dogs_standin(tmp_path)  # 3 breeds x (2 train + 1 test)
    trainval, test = StanfordDogs(tmp_path, "trainval"), StanfordDogs(tmp_path, "test")
    train, val = StanfordDogs(tmp_path, "train"), StanfordDogs(tmp_path, "val")
    assert (len(trainval), len(train), len(val), len(test)) == (6, 3, 3, 3)
    assert sorted(ids(train) + ids(val)) == sorted(ids(trainval))
    assert trainval.classes == ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
    assert trainval.part_names == [] and trainval.targets == [0, 0, 1, 1, 2, 2] and test.targets == [0, 1, 2]
    assert ids(trainval)[:2] == ["n02085620_100", "n02085620_101"] and ids(test)[0] == "n02085620_102"
    # image 0: 64 x 48, box (1, 2, 61, 46) 1-based -> corners (0, 1, 61, 46)
    assert trainval.annotation(0)["box_xywh"] == (0.0, 1.0, 61.0, 45.0)
    # image 1: 68 x 50, objects (1, 1, 10, 10) and (2, 3, 65, 48): the larger one
    s = trainval[1]
    assert s["image"].shape == (3, 50, 68) and s["box"].tolist() == [1.0, 2.0, 65.0, 48.0]
    assert s["label"].item() == 0 and s["parts"].shape == (0, 3)
    # test image (i = 2): 72 x 52, box (3, 4, 69, 50) 1-based
    assert test[0]["box"].tolist() == [2.0, 3.0, 69.0, 50.0]


def test_dogs_annotation_without_object_names_its_file(tmp_path):
    d = write_dogs_standin(tmp_path)
    xml = d / "Annotation" / "n02085782-Japanese_spaniel" / "n02085782_101"
    xml.write_text("<annotation><size><width>5</width></size></annotation>")
    with pytest.raises(DatasetError, match=rf"^{xml}: no <object> with a <bndbox>$"):
        StanfordDogs(tmp_path, "train")


# ----------------------------------------------------------------------------- Stanford Cars
def test_cars_official_split_labels_names_and_boxes(tmp_path):
    write_cars_standin(tmp_path)  # 3 models, files 00001..00006 train and 00001..00003 test
    trainval, test = StanfordCars(tmp_path, "trainval"), StanfordCars(tmp_path, "test")
    assert (len(trainval), len(test), len(StanfordCars(tmp_path, "val"))) == (6, 3, 3)
    assert trainval.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    assert trainval.targets == [1, 2, 0, 1, 2, 0] and test.targets == [1, 2, 0]
    assert ids(test) == ["cars_test/00001.jpg", "cars_test/00002.jpg", "cars_test/00003.jpg"]
    # train file k = 1: 74 x 57 px, box (4, 4, 72, 56) 1-based -> corners (3, 3, 72, 56)
    s = trainval[1]
    assert s["image"].shape == (3, 57, 74) and s["box"].tolist() == [3.0, 3.0, 72.0, 56.0] and s["label"].item() == 2
    assert trainval.annotation(0)["box_xywh"] == (2.0, 3.0, 68.0, 52.0)


def test_cars_standin_reads_the_same_in_torchvision(tmp_path):
    """torchvision's StanfordCars, which reads the published layout, finds the same images and labels."""
    write_cars_standin(tmp_path)
    for split, ours in (("train", StanfordCars(tmp_path, "trainval")), ("test", StanfordCars(tmp_path, "test"))):
        theirs = torchvision.datasets.StanfordCars(str(tmp_path), split=split, download=False)
        assert theirs.classes == ours.classes
        assert theirs._samples == [(str(r.path), r.label) for r in ours.records]


def test_cars_class_out_of_range_names_both_files(tmp_path):
    d = write_cars_standin(tmp_path, classes=2)
    from scipy.io import savemat
    names = np.empty((1, 1), dtype=object)
    names[0, 0] = "Only One 2012"
    savemat(d / "devkit" / "cars_meta.mat", {"class_names": names})
    with pytest.raises(DatasetError, match=r"cars_train_annos\.mat: image 00001\.jpg has class 2, out of range 1\.\.1 "
                                           r"of .*cars_meta\.mat"):
        StanfordCars(tmp_path, "train")


# ----------------------------------------------------------------------------- FGVC-Aircraft
def test_aircraft_official_val_split_and_label_levels(tmp_path):
    write_aircraft_standin(tmp_path)  # 4 variants x (2 train, 1 val, 1 test)
    splits = {s: FGVCAircraft(tmp_path, s) for s in ("train", "val", "trainval", "test")}
    assert {s: len(ds) for s, ds in splits.items()} == {"train": 8, "val": 4, "trainval": 12, "test": 4}
    # the publisher's val list, whatever val_fraction says: image i = 2 of each variant (ids 0034309 + 1111 i)
    for fraction in (0.1, 0.5):
        assert ids(FGVCAircraft(tmp_path, "val", val_fraction=fraction)) == ["0036531", "0040975", "0045419", "0049863"]
    assert splits["train"].classes == ["737-200", "737-300", "A300B4", "A310"]
    assert splits["train"].targets == [0, 0, 1, 1, 2, 2, 3, 3]
    family = FGVCAircraft(tmp_path, "train", label_level="family")
    maker = FGVCAircraft(tmp_path, "train", label_level="manufacturer")
    assert family.classes == ["Boeing 737", "A300", "A310"] and family.targets == [0, 0, 0, 0, 1, 1, 2, 2]
    assert maker.classes == ["Boeing", "Airbus"] and maker.targets == [0, 0, 0, 0, 1, 1, 1, 1]


def test_aircraft_banner_is_cut_and_boxes_clipped(tmp_path):
    d = write_aircraft_standin(tmp_path)
    ds = FGVCAircraft(tmp_path, "train")
    # image i = 0 (0034309): 80 x 60 px of picture over the 20-px banner; box (5, 6, 76, 78) 1-based
    s = ds[0]
    assert ds.records[0].image_id == "0034309" and s["image"].shape == (3, 60, 80)
    assert ds.annotation(0)["box_xywh"] == (4.0, 5.0, 72.0, 73.0)  # as written, reaching into the banner
    assert s["box"].tolist() == [4.0, 5.0, 76.0, 60.0]  # clipped to the picture left
    stored = TF.pil_to_tensor(Image.open(d / "data" / "images" / "0034309.jpg"))
    assert stored.shape == (3, 80, 80)
    assert torch.equal(s["image"], stored[:, :60])  # the stored pixels above the banner, uint8
    # image i = 1 (0035420): box (6, 6, 78, 50) 1-based lies above the banner, unchanged
    assert ds[1]["image"].shape == (3, 61, 82) and ds[1]["box"].tolist() == [5.0, 5.0, 78.0, 50.0]


def test_aircraft_standin_reads_the_same_in_torchvision(tmp_path):
    write_aircraft_standin(tmp_path)
    for level in ("variant", "family", "manufacturer"):
        for split in ("train", "val", "trainval", "test"):
            ours = FGVCAircraft(tmp_path, split, label_level=level)
            theirs = torchvision.datasets.FGVCAircraft(str(tmp_path), split, annotation_level=level)
            assert theirs.classes == ours.classes
            assert sorted(zip(theirs._image_files, theirs._labels)) == sorted((str(r.path), r.label) for r in ours.records)


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: (d / "images_box.txt").write_text((d / "images_box.txt").read_text().replace(
        "0034309 5 6 76 78", "0034309 5 65 76 78")),
     r"images_box\.txt: the box of image 0034309 \(4, 64, 76, 78\) lies entirely outside the 80x60 picture"),
    (lambda d: (d / "images_variant_test.txt").write_text("0037642 Concorde\n"),
     r"images_variant_test\.txt: image 0037642 has label 'Concorde', which .*variants\.txt does not list"),
    (lambda d: (d / "images_variant_trainval.txt").write_text("0034309 737-200\n"),
     r"images_variant_trainval\.txt is not the union of the train and val lists \(image 0035420 differs, and 10 more\)"),
])
def test_aircraft_bad_annotations_name_their_file(tmp_path, edit, pattern):
    edit(write_aircraft_standin(tmp_path) / "data")
    with pytest.raises(DatasetError, match=pattern):
        FGVCAircraft(tmp_path, "train")


# ----------------------------------------------------------------------------- NABirds
def test_nabirds_leaf_ids_map_to_sorted_labels_with_parts(tmp_path):
    write_nabirds_standin(tmp_path)  # leaves 1010, 295, 313 in that order, 2 train + 1 test each
    trainval, test = NABirds(tmp_path, "trainval"), NABirds(tmp_path, "test")
    assert (len(trainval), len(test), len(NABirds(tmp_path, "val"))) == (6, 3, 3)
    # ids 295 < 313 < 1010 -> 0, 1, 2, named from classes.txt (whose other nodes hold no images)
    assert trainval.classes == ["Oak Titmouse", "Bufflehead (Breeding male)", "Wood Duck (Female/Immature)"]
    assert trainval.targets == [2, 2, 0, 0, 1, 1] and test.targets == [2, 0, 1]
    assert trainval.part_names == list(NABIRDS_PARTS) and len(NABIRDS_PARTS) == 11
    assert trainval.flip_perm == (0, 1, 2, 4, 3, 5, 6, 7, 8, 10, 9)
    assert len(trainval.records[0].image_id) == 36 and trainval.records[0].image_id.count("-") == 4
    # image i = 0: 70 x 50, box "2 3 40 30"; parts 0 (bill) at (4, 5), 1 (crown) invisible, 2 (nape) at (8, 7)
    s = trainval[0]
    assert s["image"].shape == (3, 50, 70) and s["box"].tolist() == [2.0, 3.0, 42.0, 33.0]
    assert s["parts"][:3].tolist() == [[4.0, 5.0, 1.0], [0.0, 0.0, 0.0], [8.0, 7.0, 1.0]]
    # image i = 3 (the first of class 295): box "5 3 40 30", right wing (10) at (27, 15)
    assert trainval.annotation(2)["box_xywh"] == (5.0, 3.0, 40.0, 30.0)
    assert trainval[2]["parts"][10].tolist() == [27.0, 15.0, 1.0] and trainval[2]["label"].item() == 0


def test_nabirds_parts_numbered_from_one_read_the_same(tmp_path):
    d = write_nabirds_standin(tmp_path)
    zero = [NABirds(tmp_path, "test")[k]["parts"] for k in range(3)]
    (d / "parts" / "parts.txt").write_text("".join(f"{k + 1} {p}\n" for k, p in enumerate(NABIRDS_PARTS)))
    locs = [line.split(" ", 2) for line in (d / "parts" / "part_locs.txt").read_text().splitlines()]
    (d / "parts" / "part_locs.txt").write_text("".join(f"{u} {int(k) + 1} {rest}\n" for u, k, rest in locs))
    one = NABirds(tmp_path, "test")
    assert one.part_names == list(NABIRDS_PARTS)
    for k in range(3):
        assert torch.equal(one[k]["parts"], zero[k])
    (d / "parts" / "parts.txt").write_text("".join(f"{k + 2} {p}\n" for k, p in enumerate(NABIRDS_PARTS)))
    with pytest.raises(DatasetError, match=r"parts\.txt: part ids must be 0\.\.10 or 1\.\.11 without gaps"):
        NABirds(tmp_path, "test")


def test_nabirds_label_missing_from_classes_is_named(tmp_path):
    d = write_nabirds_standin(tmp_path)
    (d / "classes.txt").write_text((d / "classes.txt").read_text().replace("313 Bufflehead", "314 Bufflehead"))
    with pytest.raises(DatasetError, match=r"image_class_labels\.txt: class id 313 is not in .*classes\.txt"):
        NABirds(tmp_path, "train")


# ----------------------------------------------------------------------------- all four
MISSING = [  # (dataset, file removed, what the message says to do, the folder it names)
    ("stanford_dogs", "stanford_dogs/test_list.mat", "extract lists.tar", "stanford_dogs"),
    ("stanford_dogs", "stanford_dogs/Annotation", "extract annotation.tar", "stanford_dogs"),
    ("stanford_cars", "stanford_cars/devkit/cars_meta.mat", "extract car_devkit.tgz", "stanford_cars"),
    ("stanford_cars", "stanford_cars/cars_test_annos_withlabels.mat", "put cars_test_annos_withlabels.mat",
     "stanford_cars"),
    ("fgvc_aircraft", "fgvc-aircraft-2013b/data/images_box.txt", "extract fgvc-aircraft-2013b.tar.gz", "."),
    ("nabirds", "nabirds/parts/part_locs.txt", "extract nabirds.tar.gz", "."),
]


@pytest.mark.parametrize("dataset, rel, action, into", MISSING)
def test_a_missing_file_is_named_with_where_it_goes(tmp_path, dataset, rel, action, into):
    WRITERS[dataset](tmp_path)
    path = tmp_path / rel
    if path.is_dir():
        for p in sorted(path.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        path.rmdir()
    else:
        path.unlink()
    top = path.relative_to(tmp_path).parts[0]
    with pytest.raises(DatasetError) as err:
        CLASSES[dataset](tmp_path, "test")
    assert str(err.value) == (f"missing {path}: {action} into {tmp_path / into}"
                              f" so that {path} exists (data.root is the folder that holds {top}/)")


@pytest.mark.parametrize("dataset", list(WRITERS))
def test_an_empty_root_and_a_missing_image_are_named(tmp_path, dataset):
    with pytest.raises(DatasetError, match=rf"^missing {re.escape(str(tmp_path))}/"):
        CLASSES[dataset](tmp_path, "train")
    WRITERS[dataset](tmp_path)
    image = CLASSES[dataset](tmp_path, "test").records[-1].path
    image.unlink()
    with pytest.raises(DatasetError, match=rf"but missing on disk: {re.escape(str(image))}( \(from .*\))?$"):
        CLASSES[dataset](tmp_path, "train")  # every split's images are checked when any opens


@pytest.mark.parametrize("dataset", list(WRITERS))
def test_root_may_be_the_dataset_folder_itself(tmp_path, dataset):
    d = WRITERS[dataset](tmp_path)
    assert ids(CLASSES[dataset](d, "test")) == ids(CLASSES[dataset](tmp_path, "test"))


def test_label_level_belongs_to_aircraft_only():
    cfg = load_config("experiments/configs/aircraft_vgg19.yaml", ["data.label_level=family"])
    assert cfg["data"]["dataset"] == "fgvc_aircraft" and cfg["data"]["label_level"] == "family"
    with pytest.raises(ConfigError, match=r"data\.label_level: only fgvc_aircraft has label levels, not 'stanford_dogs'"):
        load_config("experiments/configs/dogs_vgg19.yaml", ["data.label_level=family"])
    with pytest.raises(ConfigError, match=r"data\.label_level"):
        load_config("experiments/configs/aircraft_vgg19.yaml", ["data.label_level=model"])


@pytest.mark.parametrize("name, dataset, hit_parts", [
    ("dogs", "stanford_dogs", []), ("cars", "stanford_cars", []), ("aircraft", "fgvc_aircraft", []),
    ("nabirds", "nabirds", ["bill", "crown", "nape", "left eye", "right eye"])])
def test_paper_configs_differ_from_cub_only_in_the_data(tmp_path, name, dataset, hit_parts):
    cfg = load_config(f"experiments/configs/{name}_vgg19.yaml", [f"data.root={tmp_path}"])
    cub = load_config("experiments/configs/cub200_vgg19.yaml", [f"data.root={tmp_path}"])
    assert cfg["data"]["dataset"] == dataset and cfg["data"]["hit_parts"] == hit_parts
    assert {k: v for k, v in cfg.items() if k not in ("data", "name", "work_dir")} == \
           {k: v for k, v in cub.items() if k not in ("data", "name", "work_dir")}
    WRITERS[dataset](tmp_path)
    data = build_datasets(cfg)  # the config's own data keys open the stand-in
    assert len(data["test"]) == {"fgvc_aircraft": 4}.get(dataset, 3)
    assert all(name in data["train"].part_names for name in hit_parts)


def load_train_tool():
    spec = importlib.util.spec_from_file_location("train_cli", REPO / "tools" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dataset, splits", [
    ("stanford_dogs", (3, 3, 3)), ("stanford_cars", (3, 3, 3)), ("fgvc_aircraft", (8, 4, 4)), ("nabirds", (3, 3, 3))])
def test_tiny_training_and_evaluation_of_the_whole_test_split(tmp_path, dataset, splits, capsys):
    WRITERS[dataset](tmp_path / "data")
    work = tmp_path / "run"
    extra = ["data.hit_parts=[bill, nape]"] if dataset == "nabirds" else []
    rc = load_train_tool().main(["--config", "experiments/configs/fgsynth_default.yaml", "--work-dir", str(work),
                                 "--opts", *TINY, f"data.dataset={dataset}", f"data.root={tmp_path / 'data'}",
                                 "device=cpu", *extra])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    assert "%d train / %d val / %d test images" % splits in (work / "train.log").read_text()
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["num_images"] == splits[2] and metrics["num_classes"] == {"fgvc_aircraft": 4}.get(dataset, 3)
    assert metrics["iou_object_count"] == splits[2]  # every test image has its object box
    if dataset == "nabirds":
        # test images with a visible bill or nape left in the centre crop (parts near the left edge leave it)
        assert metrics["hit_parts"] == ["bill", "nape"] and metrics["part_hit_count"] > 0
