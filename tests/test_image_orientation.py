"""EXIF orientation: a phone photo stored sideways is read upright for new images and folder
datasets; CUB keeps the stored pixels its boxes and part locations refer to."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from test_data_cub import write_cub

from raccnn.data import CUBDataset, FolderDataset, StanfordCars
from raccnn.data.standin import write_cars_standin
from raccnn.data.images import load_rgb

ORIENTATION = 0x0112  # EXIF tag; 6 = the stored image must turn 90 degrees clockwise to stand upright


def sideways_photo(path: Path, size=(60, 40), seed=0) -> np.ndarray:
    """Write a JPEG of ``size`` (w, h) whose EXIF orientation is 6, as a phone held upright saves it;
    returns the pixels a viewer shows (h and w swapped), decoded from the file itself."""
    rng = np.random.default_rng(seed)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "JPEG", exif=exif)
    with Image.open(path) as stored:
        return np.array(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270))


def test_load_rgb_turns_a_sideways_photo_upright(tmp_path):
    upright = sideways_photo(tmp_path / "phone.jpg")
    image = load_rgb(tmp_path / "phone.jpg")
    assert image.size == (40, 60)
    assert np.array_equal(np.asarray(image), upright)
    assert load_rgb(tmp_path / "phone.jpg", exif_transpose=False).size == (60, 40)


def test_a_folder_dataset_reads_photos_upright(tmp_path):
    for split in ("train", "test"):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
        upright = sideways_photo(tmp_path / split / "cat" / "phone.jpg")
        Image.new("RGB", (30, 30)).save(tmp_path / split / "dog" / "plain.png")
    ds = FolderDataset(tmp_path, "test")
    i = next(i for i in range(len(ds)) if ds.annotation(i)["path"].endswith("phone.jpg"))
    assert ds[i]["image"].shape == (3, 60, 40)
    assert torch.equal(ds._decode(i), torch.from_numpy(upright).permute(2, 0, 1))


def test_cub_keeps_the_stored_orientation_its_boxes_refer_to(tmp_path):
    d = write_cub(tmp_path)
    sideways_photo(d / "images" / "001.Alpha" / "rgb.jpg", size=(200, 100))  # box 20 10 60 40 of the stored pixels
    ds = CUBDataset(tmp_path, "trainval")
    i = next(i for i in range(len(ds)) if ds.annotation(i)["path"].endswith("rgb.jpg"))
    sample = ds[i]
    assert sample["image"].shape == (3, 100, 200)
    assert sample["box"].tolist() == [20.0, 10.0, 80.0, 50.0]


def test_the_published_datasets_keep_the_stored_orientation_too(tmp_path):
    d = write_cars_standin(tmp_path)
    sideways_photo(d / "cars_test" / "00001.jpg", size=(72, 56))  # the stand-in's first test image, same size
    ds = StanfordCars(tmp_path, "test")
    i = next(i for i in range(len(ds)) if ds.annotation(i)["path"].endswith("00001.jpg"))
    assert ds[i]["image"].shape == (3, 56, 72)
