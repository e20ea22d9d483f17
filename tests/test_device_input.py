"""uint8 samples from the workers, the model's float input made per batch on the device: the same
tensors, bit for bit, as the pipeline that normalised each image in the workers."""
from __future__ import annotations

import pytest
import torch
from conftest import DEFAULT_CONFIG, TINY, load_tool
from torch.utils.data import DataLoader, default_collate

from raccnn.config import load_config
from raccnn.data import CUBDataset, build_transforms
from raccnn.data.build import build_datasets, prepare_data
from raccnn.data.collate import collate_samples
from raccnn.data.device_input import to_model_input
from raccnn.data.standin import write_cub_standin
from raccnn.models.backbones import input_normalization

VIT = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _batches(root, split, train, resize, crop, output, normalization, batch=4):
    """The model inputs of every batch of ``split`` through a DataLoader (one worker, as in training),
    and the dtypes the worker handed over; the random draws are the same whichever the output."""
    mean, std = normalization
    tf = build_transforms(train, resize, crop, mean=mean, std=std, output=output)
    ds = CUBDataset(root, split=split, transform=tf, val_fraction=0.25)
    loader = DataLoader(ds, batch_size=batch, num_workers=1, generator=torch.Generator().manual_seed(0),
                        collate_fn=collate_samples)
    batches = [b["image"] for b in loader]  # the generator seeds the worker: its random crops and flips
    # uint8 batches cross in the workers' pixel-major layout, float ones in the model's
    assert all(b.is_contiguous(memory_format=torch.channels_last) != (output == "float") for b in batches)
    return [to_model_input(b, "cpu", normalization) for b in batches], [b.dtype for b in batches]


def _same_as_per_image(root, split, train, resize, crop, normalization):
    old, old_types = _batches(root, split, train, resize, crop, "float", normalization)
    new, new_types = _batches(root, split, train, resize, crop, "uint8", normalization)
    assert set(old_types) == {torch.float32} and set(new_types) == {torch.uint8}  # 4x fewer bytes cross over
    assert len(old) == len(new) and all(torch.equal(a, b) for a, b in zip(old, new))
    assert all(b.dtype == torch.float32 and b.is_contiguous() for b in new)


@pytest.mark.parametrize("split,train", [("train", True), ("test", False)])
def test_cub_standin_batches_equal_the_per_image_pipeline(tmp_path, split, train):
    """JPEGs around 500 x 375 at the paper's geometry scaled down: resize 160, crop 128."""
    write_cub_standin(tmp_path, classes=2, images_per_class=8, size=(250, 188))
    for normalization in (input_normalization(load_config(DEFAULT_CONFIG, [])), VIT):
        _same_as_per_image(tmp_path, split, train, 160, 128, normalization)


@pytest.mark.parametrize("split,train", [("train", True), ("val", False)])
def test_fgsynth_batches_equal_the_per_image_pipeline(data_root, tmp_path, split, train):
    cfg = load_config(DEFAULT_CONFIG, TINY + [f"data.root={data_root}", f"work_dir={tmp_path}"])
    _same_as_per_image(prepare_data(cfg), split, train, 112, 80, input_normalization(cfg))
    # the config's own datasets hand over uint8 at data.crop
    sample = build_datasets(cfg, splits=(split,))[split][0]["image"]
    assert sample.dtype == torch.uint8 and sample.shape == (3, cfg["data"]["crop"], cfg["data"]["crop"])


def test_model_input_formats_and_passes_float_through():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    x = to_model_input(images, "cpu", VIT, channels_last=True)
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32
    assert torch.equal(x, (images.float() * (1 / 255) - 0.5) / 0.5)  # ToDtype scales by the reciprocal
    normalised = torch.randn(2, 3, 5, 7)
    assert to_model_input(normalised, "cpu", VIT) is normalised  # a pipeline that normalised already


def test_collate_stacks_pixel_major_images_in_their_layout_and_the_rest_as_default_collate():
    hwc = torch.randint(0, 256, (3, 9, 11, 3), dtype=torch.uint8)
    samples = [{"image": hwc[k, 1:8, 2:10].permute(2, 0, 1), "label": torch.tensor(k)} for k in range(3)]  # crop views
    batch = collate_samples(samples)
    reference = default_collate(samples)
    assert torch.equal(batch["image"], reference["image"]) and torch.equal(batch["label"], reference["label"])
    assert reference["image"].is_contiguous() and batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert to_model_input(batch["image"], "cpu").is_contiguous()  # the model's layout, made after the move
    assert torch.equal(to_model_input(batch["image"], "cpu"), to_model_input(reference["image"], "cpu"))
    # float images, channel-major uint8 images and mixed batches: exactly default_collate
    for images in ([s["image"].float() for s in samples], [s["image"].contiguous() for s in samples],
                   [samples[0]["image"], samples[1]["image"].contiguous(), samples[2]["image"]]):
        mixed = [{"image": im, "label": torch.tensor(0)} for im in images]
        batch = collate_samples(mixed)
        assert batch["image"].is_contiguous() and torch.equal(batch["image"], default_collate(mixed)["image"])


def test_predict_reads_uint8_and_feeds_the_per_image_values(tmp_path):
    """tools/predict.py: one image file, its test geometry in uint8, the same input as before."""
    from PIL import Image

    predict = load_tool("predict")
    path = tmp_path / "bird.jpg"
    Image.effect_mandelbrot((150, 110), (-2, -1.2, 1, 1.2), 60).convert("RGB").save(path)
    image = predict.read_image(str(path), build_transforms(False, 96, 80))
    assert image.dtype == torch.uint8 and image.shape == (1, 3, 80, 80)
    old = predict.read_image(str(path), build_transforms(False, 96, 80, output="float"))
    assert torch.equal(to_model_input(image, "cpu"), old)
