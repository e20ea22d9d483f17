"""Stand-ins for the datasets in their publishers' layouts, for testing and benchmarking without the photos.

``write_cub_standin`` writes the official ``CUB_200_2011/`` layout (``images/NNN.Name/*.jpg`` and
every annotation file, with the 15 parts of CUB) holding JPEGs of about CUB's size (around 500 x 375,
the side lengths varying by image) and about CUB's file size: smooth random colour fields with a
little fine noise. At full size (``images_per_class=None``) it has CUB's 11,788 images split
5,994 / 5,794 over 200 classes. The pictures carry no class signal: use it to exercise the paper's
config end to end and to measure data loading and image checking, never to measure accuracy.

``write_dogs_standin``, ``write_cars_standin``, ``write_aircraft_standin`` and ``write_nabirds_standin``
write tiny sets in the layouts of Stanford Dogs, Stanford Cars, FGVC-Aircraft and NABirds, for the
tests of their readers (raccnn/data/dogs.py, cars.py, aircraft.py, nabirds.py).
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

CUB_PARTS = ("back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg", "left wing",
             "nape", "right eye", "right leg", "right wing", "tail", "throat")
CUB_TRAIN, CUB_TEST, CUB_CLASSES = 5994, 5794, 200


def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    coarse = rng.integers(0, 256, (h // 24 + 2, w // 24 + 2, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def write_cub_standin(root: str | Path, classes: int = CUB_CLASSES, images_per_class: int | None = None,
                      size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """Write the stand-in under ``root/CUB_200_2011`` and return that folder. ``images_per_class``
    (at least 2: one train, one test image) gives a smaller set; None gives CUB's counts."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "CUB_200_2011"
    (d / "parts").mkdir(parents=True, exist_ok=True)
    if images_per_class is None:  # CUB's own totals, spread as evenly as they go
        train = [CUB_TRAIN // classes + (c < CUB_TRAIN % classes) for c in range(classes)]
        test = [CUB_TEST // classes + (c < CUB_TEST % classes) for c in range(classes)]
    else:
        if images_per_class < 2:
            raise ValueError(f"images_per_class must be >= 2 (a train and a test image), got {images_per_class}")
        train = [(images_per_class + 1) // 2] * classes
        test = [images_per_class // 2] * classes
    names = [f"{c + 1:03d}.Standin_{c + 1}" for c in range(classes)]
    rows = {k: [] for k in ("images", "split", "labels", "boxes", "locs")}
    i = 0
    for c, name in enumerate(names):
        (d / "images" / name).mkdir(parents=True, exist_ok=True)
        for j in range(train[c] + test[c]):
            i += 1
            w = int(size[0] * rng.uniform(0.85, 1.0))
            h = int(size[1] * rng.uniform(0.85, 1.0))
            rel = f"{name}/standin_{i:05d}.jpg"
            _picture(rng, w, h).save(d / "images" / rel, "JPEG", quality=90)
            bw, bh = rng.uniform(0.3, 0.8) * w, rng.uniform(0.3, 0.8) * h
            bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            rows["images"].append(f"{i} {rel}")
            rows["split"].append(f"{i} {int(j < train[c])}")
            rows["labels"].append(f"{i} {c + 1}")
            rows["boxes"].append(f"{i} {bx:.1f} {by:.1f} {bw:.1f} {bh:.1f}")
            for k in range(len(CUB_PARTS)):
                visible = rng.random() < 0.8
                x, y = (bx + rng.uniform(0, bw), by + rng.uniform(0, bh)) if visible else (0.0, 0.0)
                rows["locs"].append(f"{i} {k + 1} {x:.1f} {y:.1f} {int(visible)}")
    files = {"images.txt": rows["images"], "train_test_split.txt": rows["split"],
             "image_class_labels.txt": rows["labels"], "bounding_boxes.txt": rows["boxes"],
             "classes.txt": [f"{c + 1} {n}" for c, n in enumerate(names)],
             "parts/parts.txt": [f"{k + 1} {p}" for k, p in enumerate(CUB_PARTS)],
             "parts/part_locs.txt": rows["locs"]}
    for rel, lines in files.items():
        (d / rel).write_text("\n".join(lines) + "\n")
    return d


# ----------------------------------------------------------------------------- the other publishers' layouts
# Tiny stand-ins of Stanford Dogs, Stanford Cars, FGVC-Aircraft and NABirds in their publishers' exact
# layouts and file formats (MATLAB files in the struct and cell shapes the publishers use, VOC-style XML,
# UUID ids), for the tests of their readers. The pictures are small and random; the annotations follow
# simple rules of the image's running number ``i`` (0-based, in the order written), so that a test can
# state the expected values: the rule of each is in its writer.

DOGS_BREEDS = ("n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog", "n02086079-Pekinese")
CARS_MODELS = ("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Acura TL Type-S 2008")
# (variant, family, manufacturer): 4 variants, 3 families, 2 manufacturers
AIRCRAFT = (("737-200", "Boeing 737", "Boeing"), ("737-300", "Boeing 737", "Boeing"), ("A300B4", "A300", "Airbus"),
            ("A310", "A310", "Airbus"))
AIRCRAFT_BANNER = 20
# (class id, name, parent id): a piece of the NABirds taxonomy; the leaves 295, 313 and 1010 hold the images
NABIRDS_TAXONOMY = ((0, "Birds", None), (1, "Perching Birds", 0), (22, "Ducks, Geese, and Swans", 0),
                    (295, "Oak Titmouse", 1), (313, "Bufflehead (Breeding male)", 22),
                    (1010, "Wood Duck (Female/Immature)", 22))
NABIRDS_LEAVES = (1010, 295, 313)  # the order images are written in: not the ids' order
NABIRDS_PARTS = ("bill", "crown", "nape", "left eye", "right eye", "belly", "breast", "back", "tail", "left wing",
                 "right wing")


def _cell(strings: list[str]) -> np.ndarray:
    """A MATLAB cell column of strings, as scipy.io.savemat writes it."""
    cell = np.empty((len(strings), 1), dtype=object)
    for k, s in enumerate(strings):
        cell[k, 0] = s
    return cell


def write_dogs_standin(root: str | Path, classes: int = 3, train_per_class: int = 2, test_per_class: int = 1,
                       seed: int = 0) -> Path:
    """``root/stanford_dogs``: Images/, Annotation/ (XML), train_list.mat, test_list.mat, file_list.mat.
    Image ``i`` is (64 + 4i) x (48 + 2i) px with the object box 1-based (1 + i, 2 + i, w - 3, h - 2);
    the second image of each class has a smaller object (1, 1, 10, 10) listed before it."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "stanford_dogs"
    folders = [DOGS_BREEDS[c] if c < len(DOGS_BREEDS) else f"n{2090000 + c:08d}-Breed_{c + 1}" for c in range(classes)]
    lists: dict[str, list] = {"train": [], "test": []}
    i = 0
    for c, folder in enumerate(folders):
        wnid = folder.split("-")[0]
        for j in range(train_per_class + test_per_class):
            w, h = 64 + 4 * i, 48 + 2 * i
            stem = f"{wnid}_{100 + j}"
            (d / "Images" / folder).mkdir(parents=True, exist_ok=True)
            (d / "Annotation" / folder).mkdir(parents=True, exist_ok=True)
            _picture(rng, w, h).save(d / "Images" / folder / f"{stem}.jpg", "JPEG", quality=90)
            objects = [(1 + i, 2 + i, w - 3, h - 2)]
            if j == 1:
                objects.insert(0, (1, 1, 10, 10))
            xml = "".join(
                f"\t<object>\n\t\t<name>{folder.split('-', 1)[1]}</name>\n\t\t<pose>Unspecified</pose>\n"
                f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
                f"\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n"
                f"\t\t</bndbox>\n\t</object>\n" for x1, y1, x2, y2 in objects)
            (d / "Annotation" / folder / stem).write_text(
                f"<annotation>\n\t<folder>{wnid[1:]}</folder>\n\t<filename>{stem}</filename>\n"
                f"\t<source>\n\t\t<database>ImageNet database</database>\n\t</source>\n"
                f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
                f"\t<segment>0</segment>\n{xml}</annotation>")
            lists["train" if j < train_per_class else "test"].append((f"{folder}/{stem}.jpg", f"{folder}/{stem}", c + 1))
            i += 1
    for name, entries in (("train", lists["train"]), ("test", lists["test"]), ("file", lists["train"] + lists["test"])):
        files, annotations, labels = zip(*entries)
        savemat(d / f"{name}_list.mat", {"file_list": _cell(list(files)), "annotation_list": _cell(list(annotations)),
                                         "labels": np.array(labels, dtype=np.float64).reshape(-1, 1)})
    return d


def _cars_annotations(rows: list[tuple], with_class: bool) -> np.ndarray:
    """The 1 x N struct array ``annotations`` of the Cars devkit."""
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"] + (["class"] if with_class else []) + ["fname"]
    out = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for k, (box, c, fname) in enumerate(rows):
        values = [np.array([[v]], dtype=np.uint16) for v in box]
        values += [np.array([[c]], dtype=np.uint8)] if with_class else []
        out[0, k] = tuple(values + [fname])
    return out


def write_cars_standin(root: str | Path, classes: int = 3, train_per_class: int = 2, test_per_class: int = 1,
                       seed: int = 0) -> Path:
    """``root/stanford_cars``: cars_train/, cars_test/, devkit/{cars_meta, cars_train_annos, cars_test_annos}.mat
    and cars_test_annos_withlabels.mat. The ``k``-th file of a folder (00001.jpg is k = 0) shows class
    (k + 1) mod ``classes`` (0-based), is (72 + 2k) x (56 + k) px, with the box 1-based (3 + k, 4, w - 2, h - 1)."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "stanford_cars"
    (d / "devkit").mkdir(parents=True, exist_ok=True)
    names = np.empty((1, classes), dtype=object)
    names[0, :] = [CARS_MODELS[c] if c < len(CARS_MODELS) else f"Standin Model {c + 1} 2012" for c in range(classes)]
    savemat(d / "devkit" / "cars_meta.mat", {"class_names": names})
    for folder, per_class, ann in (("cars_train", train_per_class, d / "devkit" / "cars_train_annos.mat"),
                                   ("cars_test", test_per_class, d / "cars_test_annos_withlabels.mat")):
        (d / folder).mkdir(exist_ok=True)
        rows = []
        for k in range(classes * per_class):
            w, h = 72 + 2 * k, 56 + k
            fname = f"{k + 1:05d}.jpg"
            _picture(rng, w, h).save(d / folder / fname, "JPEG", quality=90)
            rows.append(((3 + k, 4, w - 2, h - 1), (k + 1) % classes + 1, fname))
        savemat(ann, {"annotations": _cars_annotations(rows, True)})
        if folder == "cars_test":  # the devkit's test annotations, without classes
            savemat(d / "devkit" / "cars_test_annos.mat", {"annotations": _cars_annotations(rows, False)})
    return d


def write_aircraft_standin(root: str | Path, per_split: tuple[int, int, int] = (2, 1, 1), seed: int = 0) -> Path:
    """``root/fgvc-aircraft-2013b`` (returned) with data/{images/, the 12 list files, images_box.txt, the 3 name
    files}, for the 4 variants of ``AIRCRAFT`` with ``per_split`` (train, val, test) images each. Image ``i``
    (id ``0034309 + 1111 i``) is (80 + 2i) x (60 + i) px of picture over a 20-px black banner with white
    text marks; its box is 1-based (5 + i, 6, w - 4, H - 2) with H the full height (into the banner) for
    even ``i``, (5 + i, 6, w - 4, 50) for odd ``i``."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "fgvc-aircraft-2013b" / "data"
    (d / "images").mkdir(parents=True, exist_ok=True)
    lists = {(level, s): [] for level in ("variant", "family", "manufacturer") for s in ("train", "val", "test")}
    boxes = []
    i = 0
    for labels in AIRCRAFT:
        for s, n in zip(("train", "val", "test"), per_split):
            for _ in range(n):
                image_id = f"{34309 + 1111 * i:07d}"
                w, h = 80 + 2 * i, 60 + i
                full = np.zeros((h + AIRCRAFT_BANNER, w, 3), dtype=np.uint8)
                full[:h] = np.asarray(_picture(rng, w, h))
                full[h + 6:h + 14, 4:w - 4:3] = 255  # the banner's "text"
                Image.fromarray(full).save(d / "images" / f"{image_id}.jpg", "JPEG", quality=95)
                ymax = h + AIRCRAFT_BANNER - 2 if i % 2 == 0 else 50
                boxes.append(f"{image_id} {5 + i} 6 {w - 4} {ymax}")
                for level, name in zip(("variant", "family", "manufacturer"), labels):
                    lists[(level, s)].append(f"{image_id} {name}")
                i += 1
    for level, file in (("variant", "variants.txt"), ("family", "families.txt"), ("manufacturer", "manufacturers.txt")):
        col = ("variant", "family", "manufacturer").index(level)
        (d / file).write_text("".join(f"{n}\n" for n in dict.fromkeys(row[col] for row in AIRCRAFT)))
        for s in ("train", "val", "test"):
            (d / f"images_{level}_{s}.txt").write_text("".join(f"{line}\n" for line in lists[(level, s)]))
        trainval = sorted(lists[(level, "train")] + lists[(level, "val")])
        (d / f"images_{level}_trainval.txt").write_text("".join(f"{line}\n" for line in trainval))
    (d / "images_box.txt").write_text("".join(f"{line}\n" for line in boxes))
    return d.parent


def write_nabirds_standin(root: str | Path, train_per_class: int = 2, test_per_class: int = 1, seed: int = 0) -> Path:
    """``root/nabirds``: the NABirds files for the taxonomy ``NABIRDS_TAXONOMY``, images written class by
    class in the order ``NABIRDS_LEAVES``, parts numbered from 0. Image ``i`` is (70 + 2i) x (50 + i) px
    with the box "x y w h" = (2 + i, 3, 40, 30); part ``k`` is visible at (4 + i + 2k, 5 + k) for even
    ``k`` and invisible ("0 0 0") for odd ``k``."""
    rng = np.random.default_rng(seed)
    d = Path(root) / "nabirds"
    (d / "parts").mkdir(parents=True, exist_ok=True)
    rows = {k: [] for k in ("images", "labels", "split", "boxes", "sizes", "locs", "photographers")}
    i = 0
    for cid in NABIRDS_LEAVES:
        for j in range(train_per_class + test_per_class):
            uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            rel = f"{cid:04d}/{uid.replace('-', '')}.jpg"
            w, h = 70 + 2 * i, 50 + i
            (d / "images" / f"{cid:04d}").mkdir(parents=True, exist_ok=True)
            _picture(rng, w, h).save(d / "images" / rel, "JPEG", quality=90)
            rows["images"].append(f"{uid} {rel}")
            rows["labels"].append(f"{uid} {cid}")
            rows["split"].append(f"{uid} {int(j < train_per_class)}")
            rows["boxes"].append(f"{uid} {2 + i} 3 40 30")
            rows["sizes"].append(f"{uid} {w} {h}")
            rows["photographers"].append(f"{uid} Standin Photographer")
            for k in range(len(NABIRDS_PARTS)):
                rows["locs"].append(f"{uid} {k} {4 + i + 2 * k} {5 + k} 1" if k % 2 == 0 else f"{uid} {k} 0 0 0")
            i += 1
    files = {"images.txt": rows["images"], "image_class_labels.txt": rows["labels"],
             "train_test_split.txt": rows["split"], "bounding_boxes.txt": rows["boxes"], "sizes.txt": rows["sizes"],
             "photographers.txt": rows["photographers"],
             "classes.txt": [f"{cid} {name}" for cid, name, _ in NABIRDS_TAXONOMY],
             "hierarchy.txt": [f"{cid} {parent}" for cid, _, parent in NABIRDS_TAXONOMY if parent is not None],
             "parts/parts.txt": [f"{k} {p}" for k, p in enumerate(NABIRDS_PARTS)],
             "parts/part_locs.txt": rows["locs"]}
    for rel, lines in files.items():
        (d / rel).write_text("\n".join(lines) + "\n")
    return d
