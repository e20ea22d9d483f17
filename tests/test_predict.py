"""tools/predict.py and tools/crop_panel.py on a tiny checkpoint: predictions, crop panels, unreadable
images, checkpoints written before newer config keys."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, load_tool
from conftest import TINY_MODEL as TINY
from PIL import Image

from raccnn.config import fill_defaults, load_config
from raccnn.data.transforms import build_transforms
from raccnn.engine.checkpoint import save_checkpoint
from raccnn.engine.inference import load_trained_model
from raccnn.models import build_racnn

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["alpha", "beta", "gamma"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config(str(REPO / "experiments/configs/fgsynth_default.yaml"), TINY)
    model = build_racnn(cfg, num_classes=3)  # a vgg_small of width 4 seeing 32-pixel inputs at every scale
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "num_classes": 3, "classes": CLASSES,
                           "phase": "fusion"})
    return path


def random_image(path: Path, mode: str, size=(120, 100)) -> Path:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def run_predict(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools/predict.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


def test_an_unreadable_image_is_reported_and_the_others_still_run(checkpoint, tmp_path):
    good = random_image(tmp_path / "bird.png", "RGB")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00garbage, not a JPEG\xff" * 20)
    out = tmp_path / "out"
    res = run_predict("--checkpoint", checkpoint, good, bad, "--out", out, "--device", "cpu")

    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and str(bad) in errors[0], res.stderr
    assert "Traceback" not in res.stderr
    assert str(good) in res.stdout and str(bad) not in res.stdout
    for head in ("scale 1", "scale 2", "scale 3", "fused 1+2", "fused 1+2+3"):
        assert head in res.stdout
    assert sum(name in res.stdout for name in CLASSES) == 3  # top-5 of 3 classes lists all of them
    assert sorted(p.name for p in out.iterdir()) == ["bird_crops.png"]
    panel = Image.open(out / "bird_crops.png")
    assert panel.mode == "RGB" and panel.height == 96 + 4 and panel.width == 3 * (96 + 2) + 2




@pytest.fixture(scope="module")
def predict():
    return load_tool("predict")


def test_grayscale_cmyk_and_palette_images(predict, checkpoint, tmp_path, capsys):
    images = [random_image(tmp_path / "grey.jpg", "L"), random_image(tmp_path / "cmyk.jpg", "CMYK"),
              random_image(tmp_path / "palette.png", "P", size=(60, 200))]
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(checkpoint), *map(str, images), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == ""
    assert sorted(p.name for p in out.iterdir()) == ["cmyk_crops.png", "grey_crops.png", "palette_crops.png"]
    # probabilities of the top classes are printed and sum to one over the 3 classes
    line = next(l for l in printed.out.splitlines() if l.strip().startswith("scale 1"))
    pairs = re.findall(r"(\w+) (\d\.\d+)", line)
    assert sorted(name for name, _ in pairs) == CLASSES
    assert abs(sum(float(p) for _, p in pairs) - 1) < 2e-3


def test_missing_checkpoint_and_missing_image(predict, checkpoint, tmp_path, capsys):
    assert predict.main(["--checkpoint", str(tmp_path / "nope.pt"), str(tmp_path / "x.png")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    missing = tmp_path / "missing.png"
    assert predict.main(["--checkpoint", str(checkpoint), str(missing), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file"


def test_panel_names_never_collide(predict):
    assert predict.panel_names(["a.png", "b.jpg"]) == ["a_crops.png", "b_crops.png"]
    assert predict.panel_names(["x/a.png", "x/a.jpg", "y/a.png", "c.png"]) == \
        ["a_png_crops.png", "a_jpg_crops.png", "a_png_2_crops.png", "c_crops.png"]


def test_images_with_one_stem_get_one_panel_each(predict, checkpoint, tmp_path, capsys):
    (tmp_path / "sub").mkdir()
    images = [random_image(tmp_path / "a.png", "RGB"), random_image(tmp_path / "a.jpg", "L"),
              random_image(tmp_path / "sub" / "a.png", "RGB", size=(60, 90))]
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(checkpoint), *map(str, images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg_crops.png", "a_png_2_crops.png", "a_png_crops.png"]
    printed = capsys.readouterr().out
    assert all(f"crops: {out / name}" in printed for name in ("a_png_crops.png", "a_jpg_crops.png", "a_png_2_crops.png"))


def test_an_out_path_that_is_a_file_is_one_line_and_exit_2(checkpoint, tmp_path):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    res = run_predict("--checkpoint", checkpoint, random_image(tmp_path / "a.png", "RGB"), "--out", blocker)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {blocker}: --out folder is a file, not a folder"]
    assert blocker.read_text() == "not a folder"


def test_a_checkpoint_from_before_newer_keys_still_loads(checkpoint, tmp_path):
    """A checkpoint whose saved config lacks keys added later (model.crop.impl,
    train.cudnn_benchmark) is read with those keys at their defaults, its own values kept."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    del ckpt["config"]["model"]["crop"]["impl"], ckpt["config"]["train"]["cudnn_benchmark"]
    ckpt["config"]["model"]["crop"]["k"] = 7.0
    old = tmp_path / "old.pt"
    save_checkpoint(old, ckpt)
    model, loaded = load_trained_model(old, "cpu")
    assert model.crop_impl == "auto" and model.crop_k == 7.0
    assert loaded["config"]["train"]["cudnn_benchmark"] == "auto"
    assert fill_defaults({"model": {"width": 3}, "gone": 1})["model"]["width"] == 3
    assert fill_defaults({"gone": 1})["gone"] == 1  # keys no longer in the schema are kept, not refused


def test_crop_panel_of_a_checkpoint_from_before_newer_data_keys(tmp_path, capsys):
    """tools/crop_panel.py builds the dataset from the checkpoint's config with the keys added since
    (data.cache, data.verify_images) at their defaults, as the other tools do."""
    cfg = load_config(str(REPO / "experiments/configs/fgsynth_default.yaml"),
                      TINY + TINY_DATA + [f"data.root={tmp_path / 'data'}"])
    model = build_racnn(cfg, num_classes=3)
    del cfg["data"]["cache"], cfg["data"]["verify_images"]
    ckpt = tmp_path / "old.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": cfg, "num_classes": 3, "phase": "fusion"})
    out = tmp_path / "panel.png"
    assert load_tool("crop_panel").main(["--checkpoint", str(ckpt), "--n", "2", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert Image.open(out).mode == "RGB"


def test_an_oracle_checkpoint_is_refused_in_one_line(predict, tmp_path, capsys):
    """The oracle proposer zooms on the annotated part, which a new image lacks."""
    cfg = load_config(str(REPO / "experiments/configs/fgsynth_default.yaml"), TINY + ["model.proposer=oracle"])
    parts = ["body", "crest", "head", "tail", "wing"]
    ckpt = tmp_path / "oracle.pt"
    save_checkpoint(ckpt, {"model": build_racnn(cfg, 3, parts).state_dict(), "config": cfg, "num_classes": 3,
                           "part_names": parts, "phase": "fusion"})
    image = random_image(tmp_path / "bird.png", "RGB")
    assert predict.main(["--checkpoint", str(ckpt), str(image), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {ckpt}: its proposer is the oracle") and "\n" not in err


def test_a_sideways_phone_photo_is_read_upright(predict, tmp_path):
    """EXIF orientation 6 (the stored pixels turn 90 degrees clockwise to stand upright): the model
    sees the photo as a phone shows it, exactly the pixels of the same photo saved upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 120, 3), dtype=np.uint8)).save(
        tmp_path / "phone.jpg", "JPEG", exif=exif)
    with Image.open(tmp_path / "phone.jpg") as stored:
        stored.convert("RGB").transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    transform = build_transforms(False, 96, 96)
    seen = predict.read_image(str(tmp_path / "phone.jpg"), transform)
    assert torch.equal(seen, predict.read_image(str(tmp_path / "upright.png"), transform))


def test_class_names_that_do_not_name_every_output_are_refused(predict, checkpoint, tmp_path, capsys):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    image = random_image(tmp_path / "bird.png", "RGB")
    for classes in (["alpha", "beta"], ["alpha", "beta", "beta"]):
        bad = tmp_path / "bad.pt"
        save_checkpoint(bad, {**ckpt, "classes": classes})
        assert predict.main(["--checkpoint", str(bad), str(image), "--out", str(tmp_path / "out")]) == 2
        printed = capsys.readouterr()
        assert printed.out == "" and "\n" not in printed.err.strip()
        assert printed.err.startswith(f"error: {bad}: its class names {classes} are not 3 distinct names")
    assert not (tmp_path / "out").exists()


def test_crop_panel_of_no_image_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "panel.png"
    assert load_tool("crop_panel").main(["--checkpoint", str(checkpoint), "--n", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: --n 0: the panel needs at least one image (row)"
    assert not out.exists()
