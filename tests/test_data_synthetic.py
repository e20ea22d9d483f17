"""FG-Synth: determinism, loader compatibility, geometry of the annotations, speed."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from raccnn.data import CUBDataset, DISCRIMINATIVE_PART, DatasetError, build_transforms, ensure_fgsynth, generate_fgsynth
from raccnn.config import load_config
from raccnn.data.build import prepare_data
from raccnn.data.synthetic import (COARSE, FINE, FINE_LEAK_MAX, PATTERNS, certificate, contrast_kept, render_image,
                                   texture_scale_for)
from raccnn.errors import ConfigError

from conftest import call_main, load_tool

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


@pytest.mark.parametrize("half", [1, 2, 4, 8])
def test_patterns_survive_horizontal_flip(half):
    # flipping x must give the same texture up to a shift (the phase is random anyway)
    y, x = np.mgrid[0:32, 0:32]
    for name, fn in {**COARSE, **FINE}.items():
        m = fn(x, y, half)
        assert any(np.array_equal(m[:, ::-1], fn(x + k, y, half)) for k in range(2 * half)), name


def test_contrast_kept_against_hand_computed_filters():
    # no resampling keeps everything; shrinking a 2-px period by 2 with the anti-aliased bilinear
    # filter (taps 1/8, 3/8, 3/8, 1/8) cancels it exactly: 1/8 - 3/8 + 3/8 - 1/8 = 0
    assert contrast_kept(1, 1.0) == pytest.approx(1.0)
    assert contrast_kept(1, 2.0) == pytest.approx(0.0, abs=1e-6)
    # a 4-px period (+,+,-,-) shrunk by 2: at the best phase the taps cover (-,+,+,-), giving
    # -1/8 + 3/8 + 3/8 - 1/8 = 1/2 of the amplitude, alternating in sign: std ratio 1/2
    assert contrast_kept(2, 2.0) == pytest.approx(0.5, abs=1e-6)
    # enlarging (the crop's zoom, no anti-aliasing) keeps a 4-px period mostly
    assert contrast_kept(2, 0.5, antialias=False) > 0.6


def test_certificate_default_and_refused_settings():
    default = certificate(160, 64)  # make train-alternate's setting
    assert default["texture_scale"] == 1 and default["problem"] is None
    assert default["fine_at_scale1"] == pytest.approx(0.04, abs=0.005)
    # a 96-px set seen at 64 px: the fine texture keeps 11 % of its contrast
    small = certificate(96, 64)
    assert small["fine_at_scale1"] > FINE_LEAK_MAX and "keeps 11% of its contrast" in small["problem"]
    # larger sets get coarser textures, with the leak of the default
    assert texture_scale_for(320, 64) == 2 and certificate(320, 64)["problem"] is None
    assert texture_scale_for(480, 64) == 3 and texture_scale_for(320, 128) == 1


def test_texture_scale_multiplies_the_crest_period(tmp_path):
    # the class's fine layer, alone (coarse "flat"), read off the crest's row profile: half-period
    # 1 px at texture_scale 1 and 2 px at 2 (pixel noise is 0.02, the fine amplitude 0.28)
    c = list(PATTERNS).index("flat_lines")
    for scale in (1, 2):
        img, _, parts = render_image(c, np.random.default_rng([0, c, 0]), 192, texture_scale=scale)
        x, y, w, h = (int(round(v)) for v in parts["crest"])
        inner = img[y + h // 3: y + 2 * h // 3, x + w // 3: x + 2 * w // 3].astype(float).mean(axis=(1, 2))
        d = inner - inner.mean()
        corr = [np.corrcoef(d[:-k], d[k:])[0, 1] for k in (scale, 2 * scale)]
        assert corr[0] < -0.9 and corr[1] > 0.9, (scale, corr)


def test_config_derives_texture_scale_and_refuses_failing_sets(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("experiments/configs/fgsynth_default.yaml", ["data.synth.size=96"])
    msg = str(e.value)
    assert msg.startswith("stored at 96 px and seen at 64 px by scale 1") and "data.synth.size=104 passes" in msg
    assert "data.synth.check=false runs it anyway" in msg
    load_config("experiments/configs/fgsynth_default.yaml", ["data.synth.size=96", "data.synth.check=false"])
    cfg = load_config("experiments/configs/fgsynth_default.yaml",
                      [f"data.root={tmp_path}", "data.synth.size=320", "data.synth.classes=2",
                       "data.synth.images_per_class=3"])
    root = prepare_data(cfg)
    assert json.loads((root / "fgsynth.json").read_text())["texture_scale"] == 2


def test_ensure_reuses_complete_set_and_refuses_foreign_folder(tiny, tmp_path):
    out, d, _ = tiny
    stamp = (d / ".fgsynth_complete").stat().st_mtime_ns
    assert ensure_fgsynth(out, **TINY) == d
    assert (d / ".fgsynth_complete").stat().st_mtime_ns == stamp
    (tmp_path / "CUB_200_2011").mkdir()
    (tmp_path / "CUB_200_2011" / "notes.txt").write_text("mine\n")
    with pytest.raises(DatasetError, match="not an FG-Synth folder"):
        generate_fgsynth(tmp_path, **TINY)


def test_make_synthetic_refuses_a_failing_set(tmp_path, capsys):
    main = load_tool("make_synthetic").main
    argv = ["--out", str(tmp_path), "--size", "96", "--classes", "2", "--images-per-class", "3"]
    code, _, err = call_main(main, argv, capsys)
    assert code == 2 and err.startswith("error: stored at 96 px") and not (tmp_path / "CUB_200_2011").exists()
    code, _, err = call_main(main, argv + ["--no-check"], capsys)
    assert code == 0 and (tmp_path / "CUB_200_2011" / "fgsynth.json").is_file(), err
    code, _, err = call_main(main, argv[:2] + ["--scale1-size", "0"], capsys)
    assert code == 2 and "--scale1-size must be > 0, got 0" in err


def test_ensure_generates_once_when_several_processes_ask_at_once(tmp_path, monkeypatch):
    """Runs started side by side on one data root: the set is written once, and every caller gets
    the complete set (before the lock, the second writer deleted the first one's folders)."""
    import threading

    import raccnn.data.synthetic as synthetic

    calls = []
    generate = synthetic.generate_fgsynth

    def counting(*args, **kwargs):
        calls.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(synthetic, "generate_fgsynth", counting)
    start, results, errors = threading.Barrier(4), [], []

    def ask():
        start.wait()
        try:
            results.append(synthetic.ensure_fgsynth(tmp_path, **TINY))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(calls) == 1
    assert results == [tmp_path / "CUB_200_2011"] * 4
    assert len(CUBDataset(results[0], split="test")) == TINY["classes"] * 3
