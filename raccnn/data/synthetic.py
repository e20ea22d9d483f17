"""FG-Synth: a procedurally generated fine-grained benchmark in the CUB_200_2011 layout.

Every image shows one stylised "bird" (body, wing, head with eye and beak, tail, and a crest
on top of the head) at a random position, scale, tilt and facing direction, over a cluttered
background.  The class is decided ONLY by the texture inside the crest (one of
``PATTERNS``); colours, pose, size and background are drawn independently of the class.

Why a whole-image CNN at a low input size cannot solve it, while a zoom on the crest can:
  * a crest texture is a coarse pattern (period 8 px) plus a fine one (period 2 px), both
    zero-mean around the crest colour; five coarse patterns times two fine ones make ten
    classes. After an anti-aliased downsampling (160 -> 64 px) the fine layer averages to a
    flat colour and only the coarse one is left: a whole-image network can tell the group
    (two classes) at best;
  * cropped from the stored image and enlarged, the 2-px period becomes 4-5 px and is easy;
  * the same textures also appear on the wing and on crest-like decoys in the background,
    so "is texture X somewhere in the image" is not a shortcut: the network must look at
    the crest, which always sits on top of the head, with a dark outline.
The periods above are those of the default setting, where the stored image is shrunk by f = 2.5
for scale 1 (160 -> 64). For another factor the periods are scaled with it (``texture_scale``), and
``certificate`` checks, from the signal alone, that the fine layer vanishes at scale 1; the config
refuses FG-Synth settings that fail it (docs/data.md).
All textures are symmetric under a horizontal flip, so flip augmentation keeps the class.

With ``distractor`` (data.synth.distractor) every image also shows heads of other birds, crests
included, away from the bird (``paint_distractor``): a variant where a network's strongest response
is often not on the crest that decides the class. Each decoy crest has the bird's coarse layer and
a fine layer drawn at random, so at scale 1 it looks like the bird's crest, and only a zoom can tell
the two apart. It is written in its own folder (``fgsynth_root``).

Images are PNG (lossless: JPEG would smear 2-px textures) and fully determined by
``(seed, class, index within class)``.  Part boxes are written to ``parts/part_boxes.txt``.
A set on disk is never written over, and an unfinished one is never stamped (``generate_fgsynth``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileio import exclusive_lock
from ..errors import DatasetError

DISCRIMINATIVE_PART = "crest"
PART_NAMES = ("body", "crest", "head", "tail", "wing")  # parts.txt order, ids 1..5

# Crest textures: a class is a (coarse, fine) pair. Each layer is a binary pattern of half-period
# h px (stored pixels): the fine layer uses h = texture_scale, the coarse one 4 x texture_scale. At
# the default (texture_scale 1: periods 2 and 8 px at 160 px, about 0.8 and 3 px after the 64-px
# downsampling) the coarse layer survives the shrink and tells the class's group, the fine layer
# averages away and tells the two classes of a group apart. So a whole-image network can at best
# pick the group (about half the classes' accuracy), it has a reason to look at the crest, and a
# zoom on the crest resolves the rest.
COARSE = {
    "bands": lambda x, y, h: ((y // h) % 2).astype(np.float32),
    "columns": lambda x, y, h: ((x // h) % 2).astype(np.float32),
    "blocks": lambda x, y, h: ((x // h + y // h) % 2).astype(np.float32),
    "spots": lambda x, y, h: (((x % (2 * h)) < h) & ((y % (2 * h)) < h)).astype(np.float32),
    "flat": lambda x, y, h: np.zeros(np.broadcast(x, y).shape, dtype=np.float32),
}
FINE = {
    "lines": lambda x, y, h: ((y // h) % 2).astype(np.float32),
    "bars": lambda x, y, h: ((x // h) % 2).astype(np.float32),
}
COARSE_HALF, FINE_HALF = 4, 1  # half-periods in px at texture_scale 1
COARSE_AMPLITUDE, FINE_AMPLITUDE = 0.22, 0.28  # half peak-to-peak contrast of each layer
TILE = 2 * COARSE_HALF  # at texture_scale 1 a multiple of every period: a pattern's exact mean is its mean over one tile

# class name -> (coarse layer, fine layer); each layer is invariant to x -> -x up to a shift, and
# each gets its own random phase, so a flipped texture is as likely as the original.
PATTERNS = {f"{c}_{f}": (COARSE[c], FINE[f]) for c in COARSE for f in FINE}
PATTERN_NAMES = tuple(PATTERNS)
FINE_NAMES = tuple(FINE)

DEFAULTS = dict(classes=10, images_per_class=120, size=160, seed=0, train_fraction=0.5, texture_scale=1)
# Settings added to the generator later: recorded in fgsynth.json only where they differ from this
# value, so a set written before them (absent there) reads as the default and is still found.
RECORDED_IF_SET = dict(distractor=False)
DISTRACTOR_DIR = "distractor"  # beside CUB_200_2011 under data.root: holds the distractor variant's own CUB_200_2011
MAX_CLASSES = len(PATTERN_NAMES)
MIN_SIZE = 96  # the bird's geometry needs it to fit inside the image
# With the default train_fraction 0.5, three images per class leave two training images, one of
# which the stratified split can move to validation.
MIN_IMAGES_PER_CLASS = 3
STAMP = ".fgsynth_complete"
PARAMS_FILE = "fgsynth.json"
LOCK_FILE = ".fgsynth.lock"  # beside CUB_200_2011: held while a set is written


# ----------------------------------------------------------------------------- drawing
def _ellipse(xx, yy, cx, cy, a, b, angle=0.0):
    """Boolean mask of a filled ellipse (semi-axes a, b, rotated by ``angle`` radians)."""
    dx, dy = xx - cx, yy - cy
    c, s = np.cos(angle), np.sin(angle)
    u = (dx * c + dy * s) / a
    v = (-dx * s + dy * c) / b
    return u * u + v * v <= 1.0


def _texture(name, xx, yy, rng, scale=1):
    """Zero-mean texture of pattern ``name`` (both layers, each with a random phase), float array;
    ``scale`` multiplies both layers' periods (``texture_scale``)."""
    tile = TILE * scale
    t = np.arange(tile)
    out = np.zeros(xx.shape, dtype=np.float32)
    for layer, half, amplitude in zip(PATTERNS[name], (COARSE_HALF * scale, FINE_HALF * scale),
                                      (COARSE_AMPLITUDE, FINE_AMPLITUDE)):
        ox, oy = rng.integers(0, tile, size=2)
        m = layer(xx.astype(np.int64) + ox, yy.astype(np.int64) + oy, half)
        out += 2 * amplitude * (m - layer(t[None, :], t[:, None], half).mean())
    return out


def _paint(canvas, mask, colour):
    canvas[mask] = colour


def _paint_textured(canvas, mask, base, texture):
    """Fill ``mask`` with ``base`` colour modulated by ``texture`` (same for all channels)."""
    vals = base[None, :] + texture[mask][:, None]
    canvas[mask] = vals


def _mask_box(mask):
    """XYWH box of a boolean mask (pixel edges: a single pixel at column 3 is x=3, w=1)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()), float(ys.max() + 1 - ys.min())


def _background(rng, size, xx, yy, texture_scale):
    # smooth colour field: a random 4x4 grid, bilinearly enlarged
    small = (rng.uniform(0.15, 0.85, size=(4, 4, 3)) * 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR), dtype=np.float32) / 255
    canvas = field.copy()
    # clutter: random flat blobs
    for _ in range(rng.integers(5, 10)):
        m = _ellipse(xx, yy, *rng.uniform(0, size, 2), *rng.uniform(4, 0.15 * size, 2), rng.uniform(0, np.pi))
        _paint(canvas, m, rng.uniform(0.1, 0.9, 3))
    # decoys: outlined, crest-sized ellipses with a random texture from the same family
    for _ in range(rng.integers(2, 4)):
        cx, cy = rng.uniform(0, size, 2)
        a, b = rng.uniform(0.06, 0.11, 2) * size
        _paint(canvas, _ellipse(xx, yy, cx, cy, a + 1.5, b + 1.5), rng.uniform(0.0, 0.2, 3))
        name = PATTERN_NAMES[rng.integers(len(PATTERN_NAMES))]
        _paint_textured(canvas, _ellipse(xx, yy, cx, cy, a, b), rng.uniform(0.38, 0.62, 3), _texture(name, xx, yy, rng, texture_scale))
    return canvas


# The distractor (data.synth.distractor): DISTRACTOR_COUNT heads of other birds, crest included,
# peeking into the image away from the bird, drawn like its own head. Each decoy crest has the bird's
# coarse layer (which scale 1 sees) and a fine layer drawn at random (which it does not see): at scale 1
# a decoy crest is the bird's crest again, so the classifier has no reason to respond less to it, and
# the strongest response falls on the bird's crest in about one image in three. Zoomed, a decoy shows the
# other class of the group half of the time: the labels tell a localiser where to look, the strongest
# response does not. Decoys of a random group, which scale 1 can tell from the bird's crest, were
# suppressed by the network and did not mislead the heuristic enough (docs/data.md).
DISTRACTOR_COUNT = 2
DISTRACTOR_SCALE = 1.0  # the decoy head's size, times the bird's (same random spread)
DISTRACTOR_GAIN = 1.0  # its crest texture's contrast, times a crest's
DISTRACTOR_TRIES = 12  # positions drawn; the farthest from the crest that the bird hides little of is kept
DISTRACTOR_VERSION = 2  # recorded in a variant's fgsynth.json: version 1 (decoys of a random group) is another set


def decoy_pattern(bird_pattern: str, rng: np.random.Generator) -> str:
    """A decoy crest's pattern: the coarse layer of ``bird_pattern`` with a fine layer drawn from ``rng``."""
    coarse, _fine = bird_pattern.split("_")
    return f"{coarse}_{FINE_NAMES[rng.integers(len(FINE_NAMES))]}"


def _decoy_head(xx, yy, hx, hy, g, facing):
    """Masks of a head (disc, eye, beak) at (hx, hy) with its crest (outline, inside), size ``g``."""
    r, ka, kb = 12 * g, 14 * g, 10 * g
    ky = hy - r - 0.55 * kb
    return dict(head=_ellipse(xx, yy, hx, hy, r, r),
                eye=_ellipse(xx, yy, hx + facing * 0.45 * r, hy - 0.15 * r, 0.18 * r, 0.18 * r),
                beak=_ellipse(xx, yy, hx + facing * 1.1 * r, hy + 0.15 * r, 0.55 * r, 0.25 * r),
                outline=_ellipse(xx, yy, hx, ky, ka + 1.5 * g, kb + 1.5 * g),
                crest=_ellipse(xx, yy, hx, ky, ka, kb))


def paint_distractor(canvas, xx, yy, rng, behind, crest_at, bird_pattern, texture_scale=1):
    """Paint the distractor, drawn from ``rng``, into ``canvas`` except over the mask ``behind``
    (the bird, which stays in front); ``bird_pattern`` is the bird's crest pattern. Returns the mask
    of the pixels painted."""
    painted = np.zeros(behind.shape, dtype=bool)
    for _head in range(DISTRACTOR_COUNT):
        painted |= _paint_decoy_head(canvas, xx, yy, rng, behind, behind | painted, crest_at, bird_pattern,
                                     texture_scale)
    return painted


def _paint_decoy_head(canvas, xx, yy, rng, behind, avoid, crest_at, bird_pattern, texture_scale):
    """One decoy head, painted except over ``behind``, as far from ``crest_at`` (x, y) as a few tries
    find where ``avoid`` hides little of it; returns the mask of the pixels painted."""
    size = canvas.shape[0]
    g = rng.uniform(0.9, 1.2) * DISTRACTOR_SCALE * size / 160.0
    facing = rng.choice([-1.0, 1.0])
    r, ka, kb = 12 * g, 14 * g, 10 * g
    margin_x = max(ka + 1.5 * g, 1.65 * r) + 1
    best, step = None, 4  # candidates are compared on every 4th pixel
    for _attempt in range(DISTRACTOR_TRIES):
        hx = rng.uniform(margin_x, size - margin_x)
        hy = rng.uniform(r + 1.1 * kb + 2.5 * g + 1, size - r - 1)
        m = _decoy_head(xx[::step, ::step], yy[::step, ::step], hx, hy, g, facing)
        union = m["head"] | m["beak"] | m["outline"]
        hidden = (union & avoid[::step, ::step]).sum() / max(1, union.sum())
        score = np.hypot(hx - crest_at[0], hy - crest_at[1]) - (size if hidden > 0.2 else 0.0) - size * hidden
        if best is None or score > best[0]:
            best = (score, hx, hy)
    m = _decoy_head(xx, yy, best[1], best[2], g, facing)
    _paint(canvas, m["beak"] & ~behind, rng.uniform(0.6, 1.0, 3) * np.array([1.0, 0.8, 0.2]))
    _paint(canvas, m["head"] & ~behind, rng.uniform(0.1, 0.9, 3))
    _paint(canvas, m["eye"] & ~behind, np.zeros(3))
    _paint(canvas, m["outline"] & ~behind, rng.uniform(0.0, 0.15, 3))
    texture = DISTRACTOR_GAIN * _texture(decoy_pattern(bird_pattern, rng), xx, yy, rng, texture_scale)
    _paint_textured(canvas, m["crest"] & ~behind, rng.uniform(0.38, 0.62, 3), texture)
    return (m["head"] | m["beak"] | m["outline"]) & ~behind


def render_image(class_index: int, rng: np.random.Generator, size: int, texture_scale: int = 1,
                 distractor_rng: np.random.Generator | None = None):
    """Draw one image. Returns (uint8 HxWx3, object box xywh, {part: (x, y, w, h)}). With
    ``distractor_rng``, decoy heads (``paint_distractor``) drawn from it are added behind the bird;
    ``rng`` is used exactly as without them, so everything else in the image stays the same."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = size / 160.0  # geometry below is tuned for 160 px and scales with the image
    canvas = _background(rng, size, xx, yy, texture_scale)

    for _attempt in range(100):
        s = rng.uniform(0.9, 1.2) * u
        facing = rng.choice([-1.0, 1.0])      # head on the right (+1) or left (-1)
        tilt = rng.uniform(-0.3, 0.3)
        cx, cy = rng.uniform(0.25, 0.75) * size, rng.uniform(0.4, 0.75) * size
        a, b = 32 * s, 20 * s                 # body semi-axes
        ca, sa = np.cos(tilt), np.sin(tilt)

        def along(dx, dy):                     # body frame -> image (facing, tilt)
            dx *= facing
            return cx + dx * ca - dy * sa, cy + dx * sa + dy * ca

        rh = 12 * s
        hx, hy = along(0.8 * a, -0.75 * b)
        masks = {
            "body": _ellipse(xx, yy, cx, cy, a, b, tilt),
            "tail": _ellipse(xx, yy, *along(-1.25 * a, -0.1 * b), 13 * s, 6 * s, tilt + facing * 0.35),
            "wing": _ellipse(xx, yy, *along(-0.15 * a, 0.05 * b), 0.55 * a, 0.5 * b, tilt),
            "head": _ellipse(xx, yy, hx, hy, rh, rh),
        }
        # the crest is axis-aligned (never tilted) so stripe orientation stays meaningful
        ka, kb = 14 * s, 10 * s
        kx, ky = hx, hy - rh - 0.55 * kb
        crest_outline = _ellipse(xx, yy, kx, ky, ka + 1.5, kb + 1.5)
        masks["crest"] = _ellipse(xx, yy, kx, ky, ka, kb)
        beak = _ellipse(xx, yy, hx + facing * 1.1 * rh, hy + 0.15 * rh, 0.55 * rh, 0.25 * rh)
        union = crest_outline | beak
        for m in masks.values():
            union |= m
        border = union[0].any() | union[-1].any() | union[:, 0].any() | union[:, -1].any()
        if not border:
            break
    else:
        raise RuntimeError("could not place the object inside the image")

    body_col = rng.uniform(0.1, 0.9, 3)
    _paint(canvas, masks["tail"], body_col * rng.uniform(0.6, 0.9))
    _paint(canvas, masks["body"], body_col)
    wing_pattern = PATTERN_NAMES[rng.integers(len(PATTERN_NAMES))]
    _paint_textured(canvas, masks["wing"], rng.uniform(0.38, 0.62, 3), _texture(wing_pattern, xx, yy, rng, texture_scale))
    _paint(canvas, beak, rng.uniform(0.6, 1.0, 3) * np.array([1.0, 0.8, 0.2]))
    _paint(canvas, masks["head"], rng.uniform(0.1, 0.9, 3))
    _paint(canvas, _ellipse(xx, yy, hx + facing * 0.45 * rh, hy - 0.15 * rh, 0.18 * rh, 0.18 * rh), np.zeros(3))
    _paint(canvas, crest_outline, rng.uniform(0.0, 0.15, 3))
    crest_pattern = PATTERN_NAMES[class_index]
    _paint_textured(canvas, masks["crest"], rng.uniform(0.38, 0.62, 3), _texture(crest_pattern, xx, yy, rng, texture_scale))
    if distractor_rng is not None:
        paint_distractor(canvas, xx, yy, distractor_rng, union, (kx, ky), crest_pattern, texture_scale)

    canvas += rng.normal(0.0, 0.02, canvas.shape).astype(np.float32)
    image = (np.clip(canvas, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    parts = {name: _mask_box(masks[name]) for name in PART_NAMES}
    return image, _mask_box(union), parts


# ----------------------------------------------------------------------------- certificate
# FG-Synth tests attention only while the fine layer is invisible in the whole image at scale 1 (a
# zoom on the crest always shows it: the crop resamples without anti-aliasing). That is a property
# of the signal and the resampling, checked here without training; the trained calibration
# (experiments/calibrate_fgsynth.py) is the full test.
DEFAULT_SCALE1_SIZE = 64  # the whole stored image's side at scale 1 in the default config (f = 2.5)
# Most of the fine layer's contrast that scale 1 may keep. Calibrated (docs/data.md): with 11 % left
# (192 px -> 64) the whole-image network reaches 84.2 %, with 4-6 % (160, 200, 320 px) 45-51 %.
FINE_LEAK_MAX = 0.08


def texture_scale_for(size: int, scale1_size: float) -> int:
    """The ``texture_scale`` for a stored ``size`` seen at ``scale1_size`` px by scale 1: the
    shrink factor f = size / scale1_size over the fine period stays near the default's 2.5 / 2."""
    return max(1, round(size / scale1_size / (2.5 * FINE_HALF)))


def contrast_kept(half: int, factor: float, antialias: bool = True) -> float:
    """Fraction of a stripe pattern's contrast (standard deviation; half-period ``half`` px) left
    after resampling by 1 / ``factor`` with bilinear interpolation (as the pipeline's resize and
    the crop do), the most over the pattern's phases."""
    import torch  # the generator itself needs only numpy
    import torch.nn.functional as F

    out = 64
    n = max(1, round(out * factor))
    kept = []
    for phase in range(2 * half):
        stripes = torch.from_numpy(FINE["lines"](np.zeros(1, np.int64), np.arange(n) + phase, half))
        image = (stripes - 0.5)[:, None].expand(n, n)[None, None].contiguous()
        small = F.interpolate(image, size=(out, out), mode="bilinear", align_corners=False, antialias=antialias)
        kept.append(float(small[..., 4:-4, 4:-4].std(correction=0) / 0.5))  # away from the borders; the stripes' std is 1/2
    return max(kept)


def certificate(size: int, scale1_size: float) -> dict:
    """Signal-level check that FG-Synth stored at ``size`` px stays fine-grained for a model whose
    scale 1 sees the whole image at ``scale1_size`` px: generated with ``texture_scale_for``, the
    fine layer keeps at most FINE_LEAK_MAX of its contrast there. ``problem`` says what fails,
    else None."""
    scale = texture_scale_for(size, scale1_size)
    leak = contrast_kept(FINE_HALF * scale, size / scale1_size)
    problem = None
    if leak > FINE_LEAK_MAX:
        problem = (f"stored at {size} px and seen at {scale1_size:g} px by scale 1 (factor {size / scale1_size:.2f}), "
                   f"FG-Synth's fine texture keeps {leak:.0%} of its contrast in the whole image (at most "
                   f"{FINE_LEAK_MAX:.0%} keeps it invisible), so scale 1 alone could tell the classes apart")
    return dict(factor=size / scale1_size, texture_scale=scale, fine_at_scale1=leak, problem=problem)


# ----------------------------------------------------------------------------- dataset
# What a generation writes, by name (the generator's manifest): the annotation files, the
# parameters, the stamp and images/<class folder>/fgsynth_<class>_<index>.png. Only files so named
# are ever removed, and only from an unfinished set of ours; anything else in the folder stays.
ANNOTATION_FILES = ("images.txt", "train_test_split.txt", "image_class_labels.txt", "bounding_boxes.txt",
                    "classes.txt", "parts/parts.txt", "parts/part_locs.txt", "parts/part_boxes.txt")
_OWN_IMAGE = re.compile(r"images/(\d{3})\.([a-z_]+)/fgsynth_(\d{3})_\d{4,}\.png")
# A generation writes into out_dir/.CUB_200_2011.<8 hex digits>.tmp, then moves the finished set into place.
_TEMPORARY = re.compile(r"\.CUB_200_2011\.[0-9a-f]{8}\.tmp")

log = logging.getLogger(__name__)
_held = threading.local()  # the lock files this thread holds (ensure_fgsynth holds one around generate_fgsynth)


def _class_dir_name(c: int) -> str:
    return f"{c + 1:03d}.{PATTERN_NAMES[c]}"


def _is_own_file(rel: str) -> bool:
    """Whether the path ``rel`` (relative to a set's folder, '/'-separated) is one FG-Synth writes."""
    if rel in ANNOTATION_FILES or rel in (PARAMS_FILE, STAMP):
        return True
    m = _OWN_IMAGE.fullmatch(rel)
    return bool(m) and m[1] == m[3] and 1 <= int(m[1]) <= MAX_CLASSES and m[2] == PATTERN_NAMES[int(m[1]) - 1]


def _is_own_dir(rel: str) -> bool:
    """Whether the folder ``rel`` belongs to FG-Synth's layout."""
    classes = rel.startswith("images/") and rel[len("images/"):] in map(_class_dir_name, range(MAX_CLASSES))
    return rel in ("images", "parts") or classes


def _remove_own(folder: Path) -> list[str]:
    """Delete the files FG-Synth writes from ``folder`` and the folders of its layout left empty;
    returns what stays there (paths relative to ``folder``: files FG-Synth does not write)."""
    kept = []
    for top, dirs, files in os.walk(folder, topdown=False):
        here = Path(top).relative_to(folder).as_posix()
        prefix = "" if here == "." else here + "/"
        for name in files:
            if _is_own_file(prefix + name):
                os.remove(os.path.join(top, name))
            else:
                kept.append(prefix + name)
        for name in dirs:  # their content was seen first (bottom-up); a link is never followed
            path = os.path.join(top, name)
            if os.path.islink(path) or (os.listdir(path) == [] and not _is_own_dir(prefix + name)):
                kept.append(prefix + name + "/")
            elif os.listdir(path) == []:
                os.rmdir(path)
    return sorted(kept)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Remove what an interrupted generation (killed before its set moved into place) left in its
    temporary folder: called with the lock held, so no generation is running there."""
    for path in out_dir.iterdir():
        if _TEMPORARY.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            if _remove_own(path):
                log.warning("kept %s: it holds files FG-Synth did not write", path)
            else:
                path.rmdir()


@contextmanager
def fgsynth_lock(out_dir: str | Path):
    """Hold ``out_dir/.fgsynth.lock`` for the block (``out_dir`` is created if needed): every
    writer of FG-Synth in ``out_dir`` takes it, a second one waits. A thread that holds it already
    re-enters at once."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = os.path.realpath(Path(out_dir) / LOCK_FILE)
    held = _held.__dict__.setdefault("paths", set())
    if path in held:
        yield
        return
    with ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(path, wait=False))
        except BlockingIOError:
            log.warning("waiting for %s: another process is writing FG-Synth in %s", path, out_dir)
            stack.enter_context(exclusive_lock(path))
        held.add(path)
        try:
            yield
        finally:
            held.discard(path)


def _read_params(d: Path) -> dict:
    try:
        params = json.loads((d / PARAMS_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{d / PARAMS_FILE}: cannot read the FG-Synth setting ({exc}); remove {d} yourself "
                           f"to regenerate it there, or use another data root") from None
    if not isinstance(params, dict):
        raise DatasetError(f"{d / PARAMS_FILE}: not an FG-Synth setting; remove {d} yourself to regenerate it "
                           f"there, or use another data root")
    return params


def _key(name: str) -> str:
    """The config key of a setting (texture_scale follows data.synth.size and scale 1's view)."""
    return f"data.synth.{name}" if name in {**DEFAULTS, **RECORDED_IF_SET} and name != "texture_scale" else name


def _state(d: Path, params: dict) -> str:
    """What ``d`` holds: "missing", "empty", "interrupted" (an unstamped set of ours) or "complete"
    (the set of ``params``). A set of another setting, or a folder FG-Synth did not write, raises
    DatasetError: neither is ever written over."""
    if not d.exists():
        return "missing"
    if not d.is_dir():
        raise DatasetError(f"{d} is a file, not an FG-Synth folder; use another data root, or move it away")
    if not (d / PARAMS_FILE).is_file():
        entries = sorted(p.name for p in d.iterdir())
        if not entries:
            return "empty"
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise DatasetError(f"{d} is not an FG-Synth folder (it holds {shown}); refusing to write into it: use "
                           f"another data root (data.root, or --out), or empty {d} yourself")
    if not (d / STAMP).is_file():
        return "interrupted"
    have = _read_params(d)
    diff = [(k, _setting(have, k), v) for k, v in _compared(params).items() if _setting(have, k) != v]
    if not diff:
        return "complete"
    shown = "; ".join(f"{_key(k)}: {'absent' if a is None else repr(a)} there, {b!r} asked" for k, a, b in diff)
    raise DatasetError(f"{d} holds FG-Synth of another setting ({shown}); an existing set is never written over: "
                       f"use another data root (data.root, or --out) for this setting, or remove {d} yourself "
                       f"to regenerate it there")


def generate_fgsynth(
    out_dir: str | Path,
    classes: int = DEFAULTS["classes"],
    images_per_class: int = DEFAULTS["images_per_class"],
    size: int = DEFAULTS["size"],
    seed: int = DEFAULTS["seed"],
    train_fraction: float = DEFAULTS["train_fraction"],
    texture_scale: int = DEFAULTS["texture_scale"],
    distractor: bool = RECORDED_IF_SET["distractor"],
) -> Path:
    """Write FG-Synth to ``out_dir/CUB_200_2011`` unless this set is complete there already.

    Image ``j`` of class ``c`` is drawn from ``numpy.random.default_rng([seed, c, j])``; the
    first ``round(train_fraction * images_per_class)`` images of each class form the
    official train split, the rest the test split.  ``texture_scale`` multiplies the textures'
    periods (``texture_scale_for`` gives it for a model's scale-1 input).  ``distractor`` adds
    decoy heads to every image, drawn from its own stream ``SeedSequence([seed, c, j], spawn_key=(1,))``
    (``render_image``); the variant is kept in its own folder (``fgsynth_root``).  Returns the
    ``CUB_200_2011`` folder.

    The set is written only where there is none (a missing or empty folder) or where a generation
    of ours was interrupted (its files, and only those, are replaced); a set of another setting or
    a folder of other files raises DatasetError. It is written in a temporary folder beside, under
    ``out_dir/.fgsynth.lock``, and moved into place finished, the stamp last.
    """
    if not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be in 1..{MAX_CLASSES}, got {classes}")
    n_train = int(round(train_fraction * images_per_class))
    if images_per_class < MIN_IMAGES_PER_CLASS or not 2 <= n_train < images_per_class:
        raise ValueError(f"need images_per_class >= {MIN_IMAGES_PER_CLASS}, two train images and one test image "
                         f"per class, got {images_per_class} images of which {n_train} train")
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE} px, got {size}")
    if not (isinstance(texture_scale, int) and texture_scale >= 1):
        raise ValueError(f"texture_scale must be an integer >= 1, got {texture_scale!r}")
    if not isinstance(distractor, bool):
        raise ValueError(f"distractor must be true or false, got {distractor!r}")
    params = dict(classes=classes, images_per_class=images_per_class, size=size, seed=seed,
                  train_fraction=train_fraction, texture_scale=texture_scale, version=1)
    params.update({k: v for k, v in dict(distractor=distractor).items() if v != RECORDED_IF_SET[k]})
    if distractor:
        params["distractor_version"] = DISTRACTOR_VERSION

    out = Path(out_dir)
    d = out / "CUB_200_2011"
    with fgsynth_lock(out):
        state = _state(d, params)
        if state == "complete":
            return d
        _remove_stale_temporaries(out)
        tmp = out / f".CUB_200_2011.{secrets.token_hex(4)}.tmp"
        try:
            _write_set(tmp, params, n_train)
        except BaseException:
            if tmp.is_dir() and not _remove_own(tmp):
                tmp.rmdir()
            raise
        if state == "interrupted":
            kept = _remove_own(d)
            if kept:
                log.warning("%s: completing an interrupted FG-Synth beside files it did not write (%s)", d,
                            ", ".join(kept[:3]) + (", ..." if len(kept) > 3 else ""))
        _place(tmp, d)
    return d


def _write_set(d: Path, params: dict, n_train: int) -> None:
    """Write the set of ``params`` into the new folder ``d``, the stamp last."""
    classes, images_per_class, seed = params["classes"], params["images_per_class"], params["seed"]
    (d / "parts").mkdir(parents=True)
    (d / PARAMS_FILE).write_text(json.dumps(params, indent=1, sort_keys=True) + "\n")

    lines = {k: [] for k in ("images", "split", "labels", "boxes", "locs", "pboxes")}
    image_id = 0
    for c in range(classes):
        cdir = d / "images" / _class_dir_name(c)
        cdir.mkdir(parents=True)
        for j in range(images_per_class):
            image_id += 1
            rng = np.random.default_rng([seed, c, j])
            img, box, parts = render_image(c, rng, params["size"], params["texture_scale"],
                                           distractor_rng(seed, c, j) if params.get("distractor") else None)
            rel = f"{_class_dir_name(c)}/fgsynth_{c + 1:03d}_{j + 1:04d}.png"
            Image.fromarray(img).save(d / "images" / rel, compress_level=1)
            lines["images"].append(f"{image_id} {rel}")
            lines["split"].append(f"{image_id} {int(j < n_train)}")
            lines["labels"].append(f"{image_id} {c + 1}")
            lines["boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
            for k, name in enumerate(PART_NAMES, start=1):
                x, y, w, h = parts[name]
                lines["locs"].append(f"{image_id} {k} {x + w / 2:.1f} {y + h / 2:.1f} 1")
                lines["pboxes"].append(f"{image_id} {k} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")

    def write(name, rows):
        (d / name).write_text("\n".join(rows) + "\n")

    write("images.txt", lines["images"])
    write("train_test_split.txt", lines["split"])
    write("image_class_labels.txt", lines["labels"])
    write("bounding_boxes.txt", lines["boxes"])
    write("classes.txt", [f"{c + 1} {_class_dir_name(c)}" for c in range(classes)])
    write("parts/parts.txt", [f"{k} {n}" for k, n in enumerate(PART_NAMES, start=1)])
    write("parts/part_locs.txt", lines["locs"])
    write("parts/part_boxes.txt", lines["pboxes"])
    (d / STAMP).write_text("complete\n")  # written last: marks a finished set


def _place(tmp: Path, d: Path) -> None:
    """Move the finished set from ``tmp`` to ``d``: one rename where ``d`` is missing or an empty
    folder; else (the user's files stay there) file by file, the parameters first (they mark the
    folder as ours) and the stamp last."""
    if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
        d.rmdir()
    if not os.path.lexists(d):
        os.rename(tmp, d)
        return
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    for rel in [PARAMS_FILE] + [f for f in files if f not in (PARAMS_FILE, STAMP)] + [STAMP]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp / rel, d / rel)
    if not _remove_own(tmp):
        tmp.rmdir()


def ensure_fgsynth(out_dir: str | Path, **kwargs) -> Path:
    """Return ``out_dir/CUB_200_2011``, generating it unless a complete set with the same
    parameters is already there (checked via the stamp file written last); a set of another
    setting there raises DatasetError (``generate_fgsynth`` says where a set is written).

    Several processes may ask for the same set at once (an ablation grid's runs started side by
    side, trainings started by hand on one data root): generation holds an exclusive lock on
    ``out_dir/.fgsynth.lock``, and a process that waited for it finds the finished set and does not
    write it again."""
    d = Path(out_dir) / "CUB_200_2011"
    wanted = dict(DEFAULTS, **kwargs)
    if _is_complete(d, wanted):
        return d
    with fgsynth_lock(out_dir):
        if _is_complete(d, wanted):
            return d
        return generate_fgsynth(out_dir, **wanted)


def _is_complete(d: Path, wanted: dict) -> bool:
    if not ((d / STAMP).is_file() and (d / PARAMS_FILE).is_file()):
        return False
    have = _read_params(d)
    return all(_setting(have, k) == v for k, v in _compared(wanted).items())


def _compared(params: dict) -> dict:
    """``params`` with every RECORDED_IF_SET setting, at its default where absent: the settings
    that a set on disk must match."""
    return dict(RECORDED_IF_SET, **params)


def _setting(have: dict, key: str):
    """The value of ``key`` in a set's recorded parameters (RECORDED_IF_SET's default where absent)."""
    return have.get(key, RECORDED_IF_SET.get(key))


def distractor_rng(seed: int, c: int, j: int) -> np.random.Generator:
    """The distractor's stream for image ``j`` of class ``c``: a child of the image's own seed, so
    the image's stream ``default_rng([seed, c, j])`` is used exactly as in the default set."""
    return np.random.default_rng(np.random.SeedSequence([seed, c, j], spawn_key=(1,)))


def fgsynth_root(root: str | Path, distractor: bool = False) -> Path:
    """The folder that holds FG-Synth's ``CUB_200_2011`` under ``data.root``: ``root`` itself, or
    ``root/distractor`` for the distractor variant, so that the two sets never share a folder."""
    return Path(root) / DISTRACTOR_DIR if distractor else Path(root)
