"""Running a model: collect its outputs over a loader, load a trained checkpoint, evaluate it."""
from __future__ import annotations

import math
import os
import sys
import tempfile
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import config_diff, fill_defaults, load_config, parse_cli_opts, save_config
from ..data.build import build_dataset, prepare_data
from ..data.collate import collate_samples
from ..data.device_input import model_normalization, to_model_input
from ..device import resolve_device
from ..errors import ConfigError
from ..models.apn import peak_targets
from ..models.boxes import compose_boxes, full_image_boxes
from ..models.racnn import build_racnn
from .checkpoint import ARCHITECTURE_KEYS, CheckpointError, load_checkpoint
from .distributed import EvalShardSampler, current_world, gather_outputs
from .evaluate import compute_metrics, format_table, write_metrics
from .outputs import Outputs
from .predictions import image_names, write_predictions
from .precision import amp_dtype, autocast


@torch.no_grad()
def _run(model, loader, device, desc: str) -> Outputs:
    batches: list[Outputs] = []
    image_size = None
    for batch in tqdm(loader, desc=desc, leave=False, disable=not sys.stderr.isatty()):
        images = to_model_input(batch["image"], device, model_normalization(model))
        size = tuple(images.shape[-2:])
        if image_size is not None and size != image_size:
            raise ValueError(f"all evaluation images must have the same size, got {image_size} and {size}")
        image_size = size
        b = len(images)

        out = model(images, part_boxes=batch.get("part_boxes"))  # part boxes feed the oracle proposer
        cpu = lambda t: t.detach().float().cpu()
        box, parts, index = batch.get("box"), batch.get("parts"), batch.get("index")
        batches.append(Outputs(
            logits=[cpu(logits) for logits in out.logits],
            fused={name: cpu(logits) for name, logits in out.fused.items()},
            abs_boxes=[cpu(b) for b in out.abs_boxes],
            rel_boxes=[cpu(b) for b in out.boxes],
            peak_boxes=[cpu(b) for b in peak_boxes(out)],
            label=torch.as_tensor(batch["label"]).long().cpu(),
            box=torch.full((b, 4), math.nan) if box is None else torch.as_tensor(box).float().cpu(),
            parts=torch.zeros(b, 0, 3) if parts is None else torch.as_tensor(parts).float().cpu(),
            index=torch.arange(b) if index is None else torch.as_tensor(index).long().cpu(),
            image_size=size,
        ))
    if not batches:
        raise ValueError(f"{desc}: the loader gave no images")
    return Outputs.concat(batches)


def peak_boxes(out) -> list[Tensor]:
    """Per scale s >= 2: the scale-s square moved onto the strongest channel-summed response of
    scale s-1's last conv (where ``init_apn`` centres its targets), same half side, in input-image
    coordinates. Whether these contain the part tells whether that response sits on the part."""
    squares = []
    for s, rel in enumerate(out.boxes):
        parent = out.abs_boxes[s - 1] if s else full_image_boxes(len(rel), rel.device, rel.dtype)
        peak = peak_targets(out.maps[s].float(), 0.0)
        peak[:, 2] = rel[:, 2].float()
        squares.append(compose_boxes(parent.float(), peak))
    return squares


def collect_outputs(model, loader: Iterable, device, desc: str = "eval", amp=None) -> Outputs:
    """Run ``model`` in eval mode over ``loader`` (under autocast to ``amp``, a dtype or None) and
    return its outputs on the CPU (``outputs.Outputs``: per-scale logits, fused logits, squares,
    labels, annotations, each proposer's tl bounds). Under torchrun, where each rank's loader holds
    its share of the images, the outputs of all ranks are gathered back in dataset order.
    The model's previous train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with autocast(torch.device(device), amp):
            outputs = _run(model, loader, device, desc)
    finally:
        model.train(was_training)
    proposers = getattr(model, "proposers", [])
    if len(proposers):
        outputs.tl_bounds = torch.tensor([[float(p.tl_min), float(p.tl_max)] for p in proposers], dtype=torch.float64)
    return gather_outputs(outputs)


def load_trained_model(checkpoint: str | os.PathLike, device=None, part_names=None):
    """(model in eval mode on ``device``, checkpoint dict) of a raccnn training checkpoint; the
    model is built from the checkpoint's own config (no pretrained weights are read). The oracle
    proposer's part is looked up in the checkpoint's part names, else in ``part_names``."""
    return build_trained_model(load_training_checkpoint(checkpoint), device, part_names)


def load_training_checkpoint(checkpoint) -> dict:
    """The dict of a raccnn training checkpoint, its config with the keys added since it was
    written at their defaults (read its config before building the dataset, then
    ``build_trained_model``: one read of the file)."""
    ckpt = load_checkpoint(checkpoint)
    missing = [k for k in ("model", "config", "num_classes") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{checkpoint}: no {missing} entries (not a raccnn training checkpoint?)")
    ckpt["config"] = fill_defaults(ckpt["config"])  # keys added since it was written
    return ckpt


def build_trained_model(ckpt: dict, device, part_names):
    """(model in eval mode on ``device``, ``ckpt``) from a ``load_training_checkpoint`` dict."""
    cfg = ckpt["config"]
    dev = resolve_device(device or cfg["device"])
    model = build_racnn(dict(cfg, model=dict(cfg["model"], pretrained=False)), ckpt["num_classes"],
                        ckpt.get("part_names") or part_names or ())
    model.load_state_dict(ckpt["model"])
    return model.to(dev).eval(), ckpt


def check_classes(ckpt: dict, classes, checkpoint, where: str) -> None:
    """CheckpointError unless the dataset's ``classes`` are the checkpoint's, same names in the same
    order (label k must mean what it meant in training). A checkpoint that stores no class names
    is only checked for the count."""
    classes = list(classes)
    if len(classes) != ckpt["num_classes"]:
        raise CheckpointError(f"{checkpoint}: trained for {ckpt['num_classes']} classes, {where} has {len(classes)}")
    trained = ckpt.get("classes")
    if trained is None or list(trained) == classes:
        return
    trained = list(trained)
    gone, new = [c for c in trained if c not in classes], [c for c in classes if c not in trained]
    if gone or new:
        differ = f"only in the checkpoint: {gone}, only in the dataset: {new}"
    else:  # the same names, in another order or repeated
        k = next((i for i, (a, b) in enumerate(zip(trained, classes)) if a != b), min(len(trained), len(classes)))
        ours, theirs = (repr(names[k]) if k < len(names) else "absent" for names in (trained, classes))
        differ = f"label {k} is {ours} in the checkpoint, {theirs} in the dataset"
    raise CheckpointError(f"{checkpoint}: the class names of {where} differ from those it was trained on: {differ}; "
                          f"restore the class names (folder names, classes.txt) or pass the dataset it was trained on")


def override_config(cfg: dict, opts: Mapping, keep=ARCHITECTURE_KEYS, what: str = "the checkpoint",
                    only: Sequence[str] | None = None, why: str = "") -> dict:
    """A checkpoint's ``cfg`` with ``opts`` (``{dotted key: value}``) applied and validated again.
    ConfigError naming the option when it would change a key in ``keep`` (one that shapes the
    weights the checkpoint holds), or, with ``only``, a key not in ``only`` (``why`` says why)."""
    if not opts:
        return cfg
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.yaml")
        save_config(cfg, path)
        try:
            saved, changed = load_config(path), load_config(path, opts)
        except ConfigError as exc:  # name the checkpoint, not the temporary copy of its config
            raise ConfigError(str(exc).replace(path, f"the config of {what}")) from None
    for key, before, after in config_diff(saved, changed):
        if any(key == k or key.startswith(k + ".") for k in keep):
            given = next((o for o in opts if key == o or key.startswith(o + ".") or o.startswith(key + ".")), key)
            raise ConfigError(f"option {given}: {key} is {before!r} in {what} and shapes the weights it holds, "
                              f"so it cannot become {after!r}")
        if only is not None and key not in only:
            raise ConfigError(f"option {key}={after!r}: {what} was trained and tested with {key} {before!r}, and {why}")
    return changed


def selection_rule(cfg: dict) -> str:
    """How the training that wrote a checkpoint kept its epochs (said in metrics.json and the log)."""
    if cfg["data"]["val_fraction"] == 0:
        return "the last epoch of the schedule (data.val_fraction 0: no validation split)"
    return "the best validation epoch"


def metrics_name(checkpoint: str | os.PathLike, split: str) -> str:
    """The metrics file of one checkpoint and split: ``metrics.json`` for ``best.pt`` on the test
    split (what tools/train.py writes and experiments/ablation.py reads), ``metrics_<split>.json``
    for ``best.pt`` on another split, ``metrics_<stem>[_<split>].json`` for any other checkpoint,
    so evaluating one checkpoint never replaces another's numbers."""
    stem = os.path.splitext(os.path.basename(os.fspath(checkpoint)))[0]
    parts = ([] if stem == "best" else [stem]) + ([] if split == "test" else [split])
    return "_".join(["metrics", *parts]) + ".json"


def predictions_name(checkpoint: str | os.PathLike, split: str) -> str:
    """The per-image predictions file beside ``metrics_name(checkpoint, split)``, named after it:
    ``predictions.csv``, ``predictions_val.csv``, ``predictions_best_alternate.csv``, ..."""
    return "predictions" + metrics_name(checkpoint, split)[len("metrics"):-len(".json")] + ".csv"


# Keys an evaluation may change and still measure what training measured: where the dataset lives
# (moved) and how it is loaded. Any other change (another draw, split, resize...) gives other numbers.
SAME_MEASUREMENT_KEYS = ("data.root", "data.batch_size", "data.eval_batch_size", "data.num_workers", "data.cache",
                         "data.verify_images", "model.crop.impl", "model.crop.compile")


def score_checkpoint(checkpoint: str | os.PathLike, split: str = "test", datasets: Mapping | None = None,
                     device: str | None = None, opts: Sequence[str] | Mapping = (),
                     data_root: str | os.PathLike | None = None,
                     changed_measurement: str | None = None) -> tuple[Outputs, dict, object]:
    """(outputs, checkpoint dict, dataset) of a training checkpoint on ``split`` of the dataset its
    config names; writes nothing. ``data_root`` and ``opts`` (``KEY=VALUE`` strings or a ``{dotted
    key: value}`` mapping) override that config, except the keys that shape the weights. With
    ``changed_measurement`` (a reason), an override outside ``SAME_MEASUREMENT_KEYS`` is a
    ConfigError naming it, raised before any image is run. The dataset's class names must be
    those the checkpoint was trained on. Under torchrun each process runs its share of the images
    and the outputs are gathered, so every image counts once."""
    ckpt = load_training_checkpoint(checkpoint)
    overrides = dict(opts) if isinstance(opts, Mapping) else parse_cli_opts(opts)
    if data_root is not None:
        overrides["data.root"] = os.fspath(data_root)
    ckpt["config"] = cfg = override_config(ckpt["config"], overrides, what=os.fspath(checkpoint),
                                           only=SAME_MEASUREMENT_KEYS if changed_measurement else None,
                                           why=changed_measurement or "")
    dataset = datasets[split] if datasets and split in datasets else build_dataset(cfg, split, prepare_data(cfg))
    check_classes(ckpt, dataset.classes, checkpoint, f"the {split} split of {cfg['data']['root']}")
    model, ckpt = build_trained_model(ckpt, device, dataset.part_names)
    loader = DataLoader(dataset, batch_size=cfg["data"]["eval_batch_size"], num_workers=cfg["data"]["num_workers"],
                        sampler=EvalShardSampler(len(dataset), current_world()), collate_fn=collate_samples)
    dev = next(model.parameters()).device
    outputs = collect_outputs(model, loader, dev, f"eval {split}", amp_dtype(cfg["train"].get("amp", "none"), dev))
    return outputs, ckpt, dataset


def run_evaluation(checkpoint: str | os.PathLike, split: str = "test", datasets: Mapping | None = None,
                   device: str | None = None, opts: Sequence[str] | Mapping = (),
                   data_root: str | os.PathLike | None = None,
                   out_dir: str | os.PathLike | None = None) -> tuple[dict, str]:
    """Evaluate a training checkpoint on ``split`` (``score_checkpoint``, whose arguments it takes);
    writes ``metrics_name(checkpoint, split)`` and the per-image ``predictions_name(checkpoint,
    split)`` (``predictions.py``) in ``out_dir`` (created), by default next to the checkpoint, and
    returns (metrics, markdown table). Next to the checkpoint the files are those training wrote,
    so there an override outside ``SAME_MEASUREMENT_KEYS`` (other images, another split rule...)
    is refused before anything runs. Under torchrun only rank 0 writes the files, the predictions
    first (a metrics file marks a finished run)."""
    folder = os.path.abspath(out_dir if out_dir is not None else os.path.dirname(os.path.abspath(checkpoint)))
    guard = None if out_dir is not None else (
        f"its results next to it ({metrics_name(checkpoint, split)}) would be replaced by those of another "
        f"measurement; give the evaluation its own folder (tools/eval.py --out-dir DIR)")
    outputs, ckpt, dataset = score_checkpoint(checkpoint, split, datasets, device, opts, data_root, guard)
    cfg = ckpt["config"]
    metrics = compute_metrics(outputs, list(dataset.classes), list(dataset.part_names), cfg["data"]["hit_parts"])
    path = os.path.join(folder, metrics_name(checkpoint, split))
    predictions = os.path.join(folder, predictions_name(checkpoint, split))
    metrics.update(split=split, checkpoint=os.fspath(checkpoint), phase=ckpt.get("phase"), path=path,
                   predictions=predictions, selection=selection_rule(cfg))
    if current_world().main:
        os.makedirs(folder, exist_ok=True)
        images = image_names(dataset, outputs.index.tolist(), cfg["data"]["root"])
        write_predictions(outputs, list(dataset.classes), images, predictions)
        write_metrics(metrics, path)
    return metrics, format_table(metrics)
