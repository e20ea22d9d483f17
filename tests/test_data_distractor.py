"""FG-Synth's distractor variant (data.synth.distractor): decoy heads with crests in every image,
drawn from their own stream, kept in their own folder; the default set is drawn exactly as before.
Each decoy crest has the bird's coarse layer and a random fine layer."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import DEFAULT_CONFIG, TINY_DATA
from raccnn.config import load_config
from raccnn.data import DatasetError, generate_fgsynth
from raccnn.data import synthetic
from raccnn.data.build import build_dataset, prepare_data
from raccnn.data.synthetic import COARSE_AMPLITUDE, FINE_NAMES, PATTERN_NAMES, decoy_pattern, paint_distractor
from raccnn.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(classes=2, images_per_class=4)  # at the default size: the setting the default digest pins
# The default set's content at SMALL (decoded pixels, not PNG bytes, which depend on the zlib build, and
# every other file), computed with the generator before it had the distractor; tests/test_data_safety.py
# pins the same digest for generate_fgsynth called without the option.
DEFAULT_DIGEST = "64e8c60a95c31d1b1719a99660a648cf3f4ffebe4a100a5933163f39ad1d2984"


def content_digest(d: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file():
            data = np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes()
            digest.update(p.relative_to(d).as_posix().encode() + b"\0" + data)
    return digest.hexdigest()


def pixels(d: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(d).as_posix(): np.asarray(Image.open(p)) for p in sorted((d / "images").rglob("*.png"))}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The SMALL set without and with distractors."""
    out = tmp_path_factory.mktemp("sets")
    return generate_fgsynth(out / "default", **SMALL), generate_fgsynth(out / "variant", **SMALL, distractor=True)


def test_distractor_false_is_the_default_set(tmp_path):
    """Asked for explicitly (generator and config), ``distractor: false`` writes the very set of before."""
    assert content_digest(generate_fgsynth(tmp_path / "a", **SMALL, distractor=False)) == DEFAULT_DIGEST
    cfg = load_config(DEFAULT_CONFIG, [f"data.root={tmp_path / 'b'}", "data.synth.classes=2",
                                       "data.synth.images_per_class=4", "data.synth.distractor=false"])
    d = prepare_data(cfg)
    assert d == tmp_path / "b" / "CUB_200_2011" and content_digest(d) == DEFAULT_DIGEST


def test_distractor_is_drawn_off_the_bird_and_changes_nothing_else(both):
    """Each image differs from its default twin in a region larger than two crests, partly outside
    the bird's box; every other pixel (noise included) and every annotation file is the same."""
    default, variant = both
    a, b = pixels(default), pixels(variant)
    assert a.keys() == b.keys() and len(a) == 8
    boxes = [line.split() for line in (default / "bounding_boxes.txt").read_text().splitlines()]
    crests = [line.split() for line in (default / "parts/part_boxes.txt").read_text().splitlines() if line.split()[1] == "2"]
    for i, name in enumerate(a):
        changed = (a[name] != b[name]).any(axis=2)
        crest_area = float(crests[i][4]) * float(crests[i][5])
        assert changed.sum() > 2 * crest_area, name
        x, y, w, h = (float(v) for v in boxes[i][1:])
        bird = np.zeros_like(changed)
        bird[int(y):int(y + h), int(x):int(x + w)] = True
        assert (changed & ~bird).sum() > crest_area / 4, name  # some of it outside the bird's box
    for f in ("images.txt", "bounding_boxes.txt", "parts/part_boxes.txt", "parts/part_locs.txt"):
        assert (default / f).read_bytes() == (variant / f).read_bytes(), f
    params = json.loads((variant / "fgsynth.json").read_text())
    assert params["distractor"] is True and params["distractor_version"] == 2
    assert not {"distractor", "distractor_version"} & set(json.loads((default / "fgsynth.json").read_text()))


def test_a_variant_of_the_first_decoys_is_refused_not_read(both, tmp_path):
    """A variant written before distractor_version 2 (its fgsynth.json without the key) holds other
    pixels: asking for the variant there is one DatasetError naming the key, and nothing is touched."""
    _, variant = both
    old = tmp_path / "old" / "CUB_200_2011"
    shutil.copytree(variant, old)
    params = json.loads((old / "fgsynth.json").read_text())
    del params["distractor_version"]
    (old / "fgsynth.json").write_text(json.dumps(params))
    before = content_digest(old)
    with pytest.raises(DatasetError, match="distractor_version: absent there, 2 asked"):
        generate_fgsynth(old.parent, **SMALL, distractor=True)
    assert content_digest(old) == before


def test_decoy_pattern_keeps_the_coarse_layer_and_draws_the_fine_one():
    rng = np.random.default_rng(0)
    for bird in PATTERN_NAMES:
        drawn = {decoy_pattern(bird, rng) for _ in range(40)}
        assert drawn == {f"{bird.split('_')[0]}_{fine}" for fine in FINE_NAMES}, bird


def decoy_crest_texture(bird_pattern: str, monkeypatch) -> np.ndarray:
    """The texture paint_distractor adds to a flat canvas in the decoy crests (zero elsewhere): the
    canvas painted as shipped minus the canvas painted from the same stream with the texture off."""
    size = 160
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    canvases = []
    for gain in (1.0, 0.0):
        monkeypatch.setattr(synthetic, "DISTRACTOR_GAIN", gain)
        canvas = np.full((size, size, 3), 0.5, dtype=np.float32)
        paint_distractor(canvas, xx, yy, np.random.default_rng(3), np.zeros((size, size), bool), (80.0, 80.0), bird_pattern)
        canvases.append(canvas[..., 0])
    return canvases[0] - canvases[1]


@pytest.mark.parametrize("bird, coarse_varies_along", [("flat_bars", None), ("bands_lines", "y"), ("columns_bars", "x")])
def test_decoy_crests_show_the_birds_coarse_layer_once_the_fine_one_is_averaged(bird, coarse_varies_along, monkeypatch):
    """Averaged over any 2x2 pixels, which removes a fine layer (half-period 1 px) wherever the window
    sits, a decoy crest's texture is the bird's coarse layer: zero for the flat group; 0 or
    +-COARSE_AMPLITUDE in bands, one value along x, for bands; the same along y for columns. At scale 1
    (where the fine layer averages away, ``certificate``) a decoy crest is the bird's crest."""
    texture = decoy_crest_texture(bird, monkeypatch)
    inside = texture != 0
    assert inside.sum() > 2 * 200  # two crests of about 14 x 10 px semi-axes
    means = (texture[:-1, :-1] + texture[1:, :-1] + texture[:-1, 1:] + texture[1:, 1:]) / 4
    full = inside[:-1, :-1] & inside[1:, :-1] & inside[:-1, 1:] & inside[1:, 1:]
    assert full.sum() > 300
    if coarse_varies_along is None:
        np.testing.assert_allclose(means[full], 0.0, atol=1e-6)
        return
    levels = np.round(means[full] / COARSE_AMPLITUDE, 4)
    assert set(levels.tolist()) == {-1.0, 0.0, 1.0}
    crests, n = ndimage.label(full)  # each crest has its own phase
    assert n == synthetic.DISTRACTOR_COUNT
    for k in range(1, n + 1):
        lines, mask = (means, crests == k) if coarse_varies_along == "y" else (means.T, (crests == k).T)
        for row, m in zip(lines, mask):  # one value along each row (bands) or column (columns)
            if m.any():
                assert np.ptp(row[m]) < 1e-6


def test_distractor_set_is_deterministic_per_seed(both, tmp_path):
    _, variant = both
    again = generate_fgsynth(tmp_path / "again", **SMALL, distractor=True)
    assert content_digest(again) == content_digest(variant)
    other = pixels(generate_fgsynth(tmp_path / "seed1", **SMALL, seed=1, distractor=True))
    assert any((other[k] != v).any() for k, v in pixels(variant).items())


def test_variant_has_its_own_folder_and_never_takes_the_default(tmp_path):
    """One data.root holds both sets side by side; neither is taken for the other or written over."""
    opts = [f"data.root={tmp_path}", *TINY_DATA]
    default = prepare_data(load_config(DEFAULT_CONFIG, opts))
    before = content_digest(default)
    cfg = load_config(DEFAULT_CONFIG, opts + ["data.synth.distractor=true"])
    variant = prepare_data(cfg)
    assert variant == tmp_path / "distractor" / "CUB_200_2011" and default == tmp_path / "CUB_200_2011"
    assert content_digest(default) == before and content_digest(variant) != before
    assert build_dataset(cfg, "test").root == variant  # read from its own folder without prepare_data too
    # the recorded setting is the cache key: a variant asked for where a default set lies is refused
    with pytest.raises(DatasetError, match="data.synth.distractor: False there, True asked"):
        generate_fgsynth(tmp_path, classes=3, images_per_class=16, size=96, distractor=True)
    with pytest.raises(DatasetError, match="data.synth.distractor: True there, False asked"):
        generate_fgsynth(tmp_path / "distractor", classes=3, images_per_class=16, size=96)
    assert content_digest(default) == before


@pytest.mark.parametrize("value", ["maybe", "1", "[true]"])
def test_bad_distractor_value_is_one_config_error(value):
    with pytest.raises(ConfigError) as e:
        load_config(DEFAULT_CONFIG, [f"data.synth.distractor={value}"])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.synth.distractor: expected bool"), msg


def test_make_synthetic_writes_the_variant_in_its_folder(tmp_path):
    cmd = [sys.executable, "tools/make_synthetic.py", "--out", str(tmp_path), "--classes", "2", "--images-per-class", "4"]
    r = subprocess.run(cmd + ["--distractor"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = tmp_path / "distractor" / "CUB_200_2011"
    assert json.loads((d / "fgsynth.json").read_text())["distractor"] is True
    assert not (tmp_path / "CUB_200_2011").exists()
    r = subprocess.run(cmd + ["--distractor"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "already holds this set" in r.stdout, r.stderr


def test_shipped_config_is_the_default_run_on_the_variant():
    """experiments/configs/fgsynth_distractor.yaml resolves to fgsynth_default.yaml with the option set."""
    leaf = load_config("experiments/configs/fgsynth_distractor.yaml")
    default = load_config(DEFAULT_CONFIG, ["data.synth.distractor=true"])
    assert leaf["data"]["synth"]["distractor"] is True
    assert dict(leaf, name=None, work_dir=None) == dict(default, name=None, work_dir=None)
