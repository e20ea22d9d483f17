"""YAML configs: ``_base_`` inheritance, ``--opts`` overrides, and ``SCHEMA``, the tree of every key.

Loading (``configtree.py``): a YAML file, the parents it names under ``_base_`` merged first
(mappings merge key by key, other values replace), then ``--opts a.b=VALUE`` overrides (VALUE read
as YAML). Missing keys take the schema's defaults, and every value is checked before anything is
built: a bad key or value is one ``ConfigError`` naming the dotted key, the file or option it came
from, and the closest valid key or the allowed values.

``SCHEMA`` reads one line per key: default, limits, comment. A default or a list of names that
belongs to a piece of the library (a constructor's default argument, the attention types, the
backbones) is read from that piece, so it is written once. To add a setting, add a line; a check
that involves several keys goes into ``_cross_checks``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from .attention.create import ATTENTION_TYPES, build_attention, check_attention
from .attention.sasa import check_layer
from .data.aircraft import LABEL_LEVELS
from .data.build import CACHE_SETTINGS, DATASETS, scale1_size
from .data.verify import VERIFY_MODES
from .data.synthetic import DEFAULTS as SYNTH, MAX_CLASSES, MIN_IMAGES_PER_CLASS, MIN_SIZE, RECORDED_IF_SET, certificate
from .device import DEVICES
from .configtree import Key, arg, config_diff, merge_into, parse_cli_opts, read_config, save_config, validate
from .errors import ConfigError
from .localisers import LOCALISERS
from .losses import MARGIN
from .models.apn import APN
from .models.backbones import TIMM_PREFIX, check_backbone_name, min_input_size, vgg_stage_channels
from .models.crop import GRAD_MODES, IMPLS as CROP_IMPLS, K_DEFAULT
from .models.fusion import FUSIONS
from .models.proposers import PROPOSER_OPTIONS, PROPOSERS
from .models.racnn import RACNN
from .train_options import AMP_MODES, OPTIMIZERS

__all__ = ["ConfigError", "Key", "SCHEMA", "load_config", "resolve_config", "default_config", "save_config",
           "config_diff", "parse_cli_opts", "HOW_COMPUTED"]

# Keys that choose how the same formulas are computed (the crop's implementation, compilation, memory
# layout, cuDNN's algorithm search; equal up to float rounding, tests/test_crop.py and
# tests/test_precision.py), not which experiment runs: a resumed run (tools/train.py) and a grid's
# finished run (experiments/ablation.py) may differ in them, e.g. a run saved with
# model.crop.impl=gather, the default before auto, or one continued on a GPU.
HOW_COMPUTED = ("model.crop.impl", "model.crop.compile", "train.compile", "train.channels_last",
                "train.cudnn_benchmark")


def _dirname(v):
    return f"{v!r} is not usable as a directory name" if not v or "/" in v or "\\" in v or v in (".", "..") else None


def _positive(v):
    return None if v > 0 else f"{v} must be > 0"


MAX_LR = 10.0  # a learning rate above this is refused unless train.force_lr is true


def _auto_bool() -> Key:
    """A key taking ``auto`` (decided per device where it is used), true or false."""
    return Key("auto", (str, bool), check=lambda v: None if v in ("auto", True, False)
               else f"{v!r} is not one of auto, true, false")


def _warmup() -> Key:
    """A phase's linear lr warmup, in epochs (engine/schedule.py); 0 = none."""
    return Key(0.0, min=0.0)


def _stage(epochs: int, lr: float, optimizer: str = "sgd", min_epochs: int = 0) -> dict:
    return {"epochs": Key(epochs, min=min_epochs), "lr": Key(lr, min=0.0), "optimizer": Key(optimizer, choices=OPTIMIZERS),
            "warmup_epochs": _warmup()}


def _alternating(lr: float, min_delta: float, optimizer: str = "sgd") -> dict:
    return {"lr": Key(lr, min=0.0), "optimizer": Key(optimizer, choices=OPTIMIZERS),
            "lr_decay": Key(1.0, min=0.0, max=1.0),  # round r (from 0) starts at lr x lr_decay**r
            "min_epochs": Key(1, min=0), "max_epochs": Key(4, min=0),  # epochs of one sub-phase
            "patience": Key(1, min=0), "min_delta": Key(min_delta, min=0.0),  # plateau of its val loss
            "warmup_epochs": _warmup()}


SCHEMA: dict = {
    "name": Key(None, str, nullable=True, check=_dirname),  # run name; default: the config file's stem
    # Paths (work_dir, data.root, model.pretrained as a file): a leading ~ is the home folder; a
    # relative path is relative to the current working directory, not to the config file.
    "work_dir": Key(None, str, nullable=True, path=True),  # default: work_dirs/<name>
    "seed": Key(0),
    "device": Key("auto", choices=DEVICES),
    "deterministic": Key(False),  # torch.use_deterministic_algorithms
    "data": {
        "dataset": Key("fgsynth", choices=DATASETS),
        # the folder holding the dataset's own top folder (CUB_200_2011/, nabirds/...); a relative path is
        # relative to the current working directory, ~ is the home folder
        "root": Key("data/fgsynth", path=True),
        "label_level": Key("variant", choices=list(LABEL_LEVELS)),  # fgvc_aircraft: the labels' level
        "synth": {  # FG-Synth, generated under data.root when absent
            "classes": Key(SYNTH["classes"], min=2, max=MAX_CLASSES),
            "images_per_class": Key(SYNTH["images_per_class"], min=MIN_IMAGES_PER_CLASS),
            "size": Key(SYNTH["size"], min=MIN_SIZE),  # stored image side, px
            "seed": Key(SYNTH["seed"], min=0),
            "distractor": Key(RECORDED_IF_SET["distractor"]),  # decoy heads in every image; its own folder data.root/distractor
            "check": Key(True),  # refuse settings where the whole image alone shows the class (certificate)
        },
        "resize": Key(160, min=8),  # shorter side after resizing
        "crop": Key(160, min=8),  # square crop: random (train) or centre (eval)
        "flip": Key(True),
        # of the official training images, per class; 0: train on all of them, no validation split (the
        # phases run their max epochs, the schedule's last epoch is kept: docs/configs.md)
        "val_fraction": Key(0.1, min=0.0, max=0.9),
        "split_seed": Key(0, min=0),
        "batch_size": Key(32, min=1),
        "eval_batch_size": Key(64, min=1),
        "num_workers": Key(0, min=0),
        "cache": Key("auto", choices=CACHE_SETTINGS),  # images kept in memory (data/build.py); auto: FG-Synth only
        "skip_unreadable": Key(False),  # drop images that fail the check instead of stopping
        "verify_images": Key("header", choices=VERIFY_MODES),  # checked when a dataset opens (data/verify.py)
        "max_images": Key(0, min=0),  # per split: only the first N after the split rule (smoke tests); 0 = all
        "hit_parts": Key([], item=str),  # parts whose centre defines a part hit; the first is the oracle's
        # per-channel normalisation of the inputs; null: the backbone's pretraining (models/backbones.py)
        "mean": Key(None, list, item=float, length=3, nullable=True),
        "std": Key(None, list, item=float, length=3, nullable=True,
                   check=lambda v: None if all(x > 0 for x in v) else f"{v}: every entry must be > 0"),
    },
    "model": {
        "backbone": Key(arg(RACNN, "backbone"), check=check_backbone_name),
        "width": Key(arg(RACNN, "width"), min=1),  # channels of vgg_small's first stage
        "backbone_kwargs": Key({}),  # timm backbones: extra timm.create_model arguments, e.g. {drop_path_rate: 0.2}
        "pretrained": Key(arg(RACNN, "pretrained"), (bool, str), path=True),  # true: torchvision's cache; a string: a file
        "n_scales": Key(arg(RACNN, "n_scales"), min=2, max=5),  # a scale to zoom from and one to zoom into
        "input_sizes": Key(list(arg(RACNN, "input_sizes")), min=8),  # one per scale
        "dropout": Key(arg(RACNN, "dropout"), min=0.0, max=1.0),
        "sync_bn": Key(False),  # BatchNorm statistics over all processes under torchrun (BN backbones)
        "apn": {  # sizes of the APN; bounds of every proposer's half side tl
            "hidden": Key(arg(APN, "hidden"), min=1),
            "pool_size": Key(arg(APN, "pool_size"), min=1),
            "tl_min": Key(arg(APN, "tl_min"), min=0.0, max=0.5),
            "tl_max": Key(arg(APN, "tl_max"), min=0.0, max=0.5),
            "keep_inside": Key(arg(APN, "keep_inside")),
        },
        "crop": {"k": Key(K_DEFAULT, check=lambda v: None if v > 0 else f"{v} must be > 0 (at 0 the mask, and so "
                          "every crop, is zero)"),  # the mask's steepness per input pixel
                 "grad": Key(arg(RACNN, "crop_grad"), choices=GRAD_MODES),
                 "impl": Key(arg(RACNN, "crop_impl"), choices=CROP_IMPLS),  # same formulas (models/crop.py)
                 "compile": Key(arg(RACNN, "crop_compile"))},  # torch.compile of the crop (docs/speed.md)
        "attention": {  # blocks at the end of VGG stages
            "type": Key("none", choices=ATTENTION_TYPES),
            "stages": Key([], item=int, min=1),  # 1-based
            "identity_init": Key(arg(build_attention, "identity_init")),
            "kwargs": Key({}),  # extra arguments of the block, e.g. {reduction: 8}
            "replace_convs": Key(False),  # sasa only: the stages' 3x3 convs become SASA layers (its paper's use)
        },
        "proposer": Key(arg(RACNN, "proposer"), choices=list(PROPOSERS)),
        "fusion": Key(arg(RACNN, "fusion"), choices=list(FUSIONS)),  # models/fusion.py
        "proposer_cfg": {key: Key(float(arg(PROPOSERS[name], a)), min=lo, max=hi)
                         for key, (name, a, lo, hi) in PROPOSER_OPTIONS.items()},
    },
    "train": {
        "momentum": Key(0.9, min=0.0, max=1.0),
        "weight_decay": Key(5e-4, min=0.0),  # of the SGD phases; the Adam phases (APNs) have none
        "log_interval": Key(20, min=1),  # steps between TensorBoard points
        "force_lr": Key(False),  # accept learning rates above MAX_LR
        "amp": Key("auto", choices=AMP_MODES),  # autocast: auto = bf16 on CUDA, none on the CPU
        "channels_last": _auto_bool(),  # auto = on CUDA
        "cudnn_benchmark": _auto_bool(),  # auto = on CUDA unless deterministic
        "compile": Key(False),  # torch.compile the scale networks (engine/precision.py, docs/speed.md)
        # also keep every epoch that competes for best_alternate.pt, weights only, in <work_dir>/epochs/
        # (engine/trainer.py): for studies of model selection (experiments/selection.py)
        "keep_epochs": Key(False),
        # recipe options (docs/configs.md): every training cross-entropy's label smoothing (validation unsmoothed),
        # batches per optimiser step (engine/accumulate.py), the lr factor a phase's warmup starts from
        "label_smoothing": Key(0.0, min=0.0, check=lambda v: None if v < 1 else f"{v} must be below 1 (at 1 the "
                               "target is uniform and says nothing of the class)"),
        "accumulate": Key(1, min=1),
        # training images an epoch draws at least (engine/distributed.py ShardSampler): a small training
        # split is passed over more than once per epoch, so that a schedule counted in epochs keeps its
        # optimiser steps; 0 = one pass, as always
        "epoch_images": Key(0, min=0),
        "warmup_factor": Key(1e-3, max=1.0, check=lambda v: None if v > 0 else f"{v} must be > 0 (the first "
                             "warmup step's lr is lr x warmup_factor)"),
        # mixup: alpha of the Beta(alpha, alpha) weight that blends image pairs in pretrain_cls (phases.py); 0: off.
        # tries: pretrain_cls run that many times from the same start, the try with the best final
        # validation accuracy of scale 1 kept (needs a validation split); 1: once, as always.
        # runner_up_scales: scales (1-based, not 1) that start from the second-best try instead of the best
        "pretrain_cls": {**_stage(epochs=8, lr=0.05), "mixup": Key(0.0, min=0.0), "tries": Key(1, min=1),
                         "runner_up_scales": Key([], item=int, min=2)},
        # target: where init_apn centres its squares: the strongest channel-summed response of the
        # scale's last conv (the paper's) or the peak of the true class's activation map (class)
        "init_apn": {**_stage(epochs=3, lr=1e-3, optimizer="adam"), "tl": Key(0.25, min=0.0, max=0.5),
                     "target": Key("response", choices=["response", "class"])},
        "alternate": {
            "rounds": Key(3, min=0),
            # best_alternate.pt keeps the best validation epoch of rounds >= this one (1: every round);
            # an epoch of an earlier round may still hold init_apn's squares (docs/results.md)
            "select_from_round": Key(1, min=1),
            # decay of a moving average of the weights over the alternation, which its validation,
            # plateaus and best_alternate.pt see (engine/averaging.py); 0: the weights as trained
            "ema": Key(0.0, min=0.0, check=lambda v: None if v < 1 else f"{v} must be below 1 (at 1 the average "
                       "stays at the weights the alternation starts from)"),
            "margin": Key(MARGIN, min=0.0),  # of the rank loss (losses.py)
            # what trains the APNs in alternate_apn: the rank loss, or a localiser scoring other squares
            "localiser": Key("rank", choices=LOCALISERS),  # (localisers.py, docs/rank-loss.md)
            "localise": {  # the localisers' settings (not the rank loss's)
                "candidates": Key(6, min=2, max=64),  # squares scored per image and APN, in one batch
                "sigma": Key(0.1, max=0.5, check=_positive),  # best_of_k, reinforce: spread of the squares around the APN's, view units
                "temperature": Key(1.0, check=_positive),  # best_of_k: goal weights softmax(log p_t / T)
                "tl": Key(0.25, max=0.5, check=_positive),  # search: half side of its squares, view units
            },
            # box_jitter: spread of the Gaussian noise on the APNs' squares (tx, ty, tl; view units) while
            # the scales train, the finer scales' crop augmentation; 0: the squares as proposed
            # frozen_scales: scales (1-based) alternate_cls leaves as they are, weights and BatchNorm
            # statistics: the APN reading a frozen scale's features sees the same maps in every round
            # from frozen_from_round on (1-based; the rounds before train them as the others)
            "cls": {**_alternating(lr=0.01, min_delta=1e-3), "box_jitter": Key(0.0, min=0.0, max=0.25),
                    "frozen_scales": Key([], item=int, min=1), "frozen_from_round": Key(1, min=1)},
            "apn": _alternating(lr=1e-3, min_delta=1e-4, optimizer="adam"),
        },
        "joint": {**_stage(epochs=0, lr=0.01), "rank_weight": Key(1.0, min=0.0)},  # 0 epochs: off (phases.py)
        # best.pt is a fused model; model.fusion: features only (log_probs is fitted, no epochs);
        # l2: log_probs only, the ridge penalty l2 * sum_s w_s^2 on its weights (models/fusion.py)
        "fusion": {**_stage(epochs=3, lr=0.05, min_epochs=1), "l2": Key(0.0, min=0.0)},
    },
    "eval": {"split": Key("test", choices=["val", "test"])},
}


def _cross_checks(c: dict):
    """(keys involved, message) for each problem that involves several keys."""
    m, d, apn = c["model"], c["data"], c["model"]["apn"]
    if len(m["input_sizes"]) != m["n_scales"]:
        yield (("model.input_sizes", "model.n_scales"), f"model.input_sizes has {len(m['input_sizes'])} entries "
               f"{m['input_sizes']} but model.n_scales is {m['n_scales']} (one input size per scale)")
    smallest = min_input_size(m["backbone"])
    if min(m["input_sizes"]) < smallest:
        yield (("model.input_sizes", "model.backbone"),
               f"model.input_sizes {m['input_sizes']}: {m['backbone']} needs inputs of at least {smallest} px")
    if m["backbone_kwargs"] and not m["backbone"].startswith(TIMM_PREFIX):
        yield (("model.backbone_kwargs", "model.backbone"), f"model.backbone_kwargs: only timm backbones take extra "
               f"arguments, not {m['backbone']}")
    if not 0 < apn["tl_min"] <= apn["tl_max"] <= 0.5:
        yield (("model.apn.tl_min", "model.apn.tl_max"), "need 0 < model.apn.tl_min <= model.apn.tl_max <= 0.5, "
               f"got tl_min={apn['tl_min']} and tl_max={apn['tl_max']}")
    if d["crop"] > d["resize"]:
        yield ("data.crop", "data.resize"), f"data.crop ({d['crop']}) must not exceed data.resize ({d['resize']})"
    for step in ("cls", "apn"):
        s, key = c["train"]["alternate"][step], f"train.alternate.{step}"
        if s["min_epochs"] > s["max_epochs"]:
            yield ((f"{key}.min_epochs", f"{key}.max_epochs"), f"{key}.min_epochs ({s['min_epochs']}) must not "
                   f"exceed {key}.max_epochs ({s['max_epochs']})")
    alt = c["train"]["alternate"]
    frozen = alt["cls"]["frozen_scales"]
    if len(set(frozen)) != len(frozen) or max(frozen, default=0) > m["n_scales"] or len(frozen) >= m["n_scales"]:
        yield (("train.alternate.cls.frozen_scales", "model.n_scales"), f"train.alternate.cls.frozen_scales "
               f"{frozen}: distinct scales from 1 to model.n_scales ({m['n_scales']}), at least one of them left to train")
    if frozen and alt["rounds"] > 0 and alt["cls"]["frozen_from_round"] > alt["rounds"]:
        yield (("train.alternate.cls.frozen_from_round", "train.alternate.rounds"),
               f"train.alternate.cls.frozen_from_round ({alt['cls']['frozen_from_round']}) must not exceed "
               f"train.alternate.rounds ({alt['rounds']}): frozen_scales {frozen} would never be frozen")
    if alt["rounds"] > 0 and alt["select_from_round"] > alt["rounds"]:
        yield (("train.alternate.select_from_round", "train.alternate.rounds"),
               f"train.alternate.select_from_round ({alt['select_from_round']}) must not exceed "
               f"train.alternate.rounds ({alt['rounds']}): no epoch would be kept in best_alternate.pt")
    for key, s in _phase_sections(c["train"]):
        epochs = s.get("max_epochs", s.get("epochs"))
        if s["warmup_epochs"] > 0 and s["warmup_epochs"] >= epochs:
            length = "max_epochs" if "max_epochs" in s else "epochs"
            yield ((f"{key}.warmup_epochs", f"{key}.{length}"), f"{key}.warmup_epochs ({s['warmup_epochs']:g}) must "
                   f"be shorter than the phase: {key}.{length} is {epochs}")
    if d["dataset"] == "fgsynth" and d["synth"]["check"]:
        size, scale1 = d["synth"]["size"], scale1_size(c)
        problem = certificate(size, scale1)["problem"]
        if problem:
            fits = next((s for s in range(size, 8 * size, 8) if not certificate(s, scale1)["problem"]), None)
            hint = f"data.synth.size={fits} passes" if fits else "no stored size nearby passes"
            yield (("data.synth.size", "model.input_sizes", "data.resize", "data.crop"),
                   f"{problem} ({hint}; data.synth.check=false runs it anyway)")
    if d["label_level"] != "variant" and d["dataset"] != "fgvc_aircraft":
        yield (("data.label_level", "data.dataset"), f"data.label_level: only fgvc_aircraft has label levels, "
               f"not {d['dataset']!r}")
    if d["val_fraction"] == 0 and m["fusion"] == "log_probs":
        yield (("data.val_fraction", "model.fusion"), "model.fusion: log_probs fits its weights on the validation "
               "split, which data.val_fraction 0 leaves out; use model.fusion=features or a val_fraction above 0")
    if c["train"]["fusion"]["l2"] and m["fusion"] != "log_probs":
        yield (("train.fusion.l2", "model.fusion"), f"train.fusion.l2 penalises the weights of model.fusion "
               f"log_probs; model.fusion is {m['fusion']!r} (train.fusion.l2=0 or model.fusion=log_probs)")
    pre = c["train"]["pretrain_cls"]
    runner_up = pre["runner_up_scales"]
    if runner_up and (pre["tries"] < 2 or len(set(runner_up)) != len(runner_up) or max(runner_up) > m["n_scales"]):
        yield (("train.pretrain_cls.runner_up_scales", "train.pretrain_cls.tries", "model.n_scales"),
               f"train.pretrain_cls.runner_up_scales {runner_up}: distinct scales from 2 to model.n_scales "
               f"({m['n_scales']}), and a second try to start them from (tries is {pre['tries']})")
    if d["val_fraction"] == 0 and pre["tries"] > 1:
        yield (("data.val_fraction", "train.pretrain_cls.tries"), "train.pretrain_cls.tries: the try kept is the one "
               "with the best validation accuracy, and data.val_fraction 0 leaves no validation split; set tries to 1")
    if d["val_fraction"] == 0 and c["eval"]["split"] == "val":
        yield (("data.val_fraction", "eval.split"), "eval.split: 'val' is empty with data.val_fraction 0; "
               "evaluate on test")
    if m["proposer"] == "oracle" and not d["hit_parts"]:
        yield ("model.proposer", "data.hit_parts"), "model.proposer: 'oracle' needs data.hit_parts to name its part"
    if not c["train"]["force_lr"]:
        for key, _, lr in config_diff({}, {"train": c["train"]}):  # every train.* leaf, as dotted keys
            if key.endswith(".lr") and lr > MAX_LR:
                yield (key,), f"{key}: {lr} is above {MAX_LR}, no sane learning rate; set train.force_lr=true to run it anyway"
    att = m["attention"]
    if att["replace_convs"] and att["type"] != "sasa":
        yield (("model.attention.replace_convs", "model.attention.type"), f"model.attention.replace_convs: only "
               f"type sasa replaces convolutions, not {att['type']!r}")
    elif att["type"] != "none" and not att["stages"]:
        yield (("model.attention.type", "model.attention.stages"), f"model.attention.type {att['type']!r} needs "
               "model.attention.stages, the stages (1-based) whose end takes a block, e.g. [4]")
    elif att["type"] != "none":
        channels = vgg_stage_channels(m["backbone"], m["width"])
        if max(att["stages"]) > len(channels):
            yield (("model.attention.stages", "model.backbone"), f"model.attention.stages {att['stages']}: "
                   f"{m['backbone']} has {len(channels)} stages that can take a block" if channels else
                   f"model.attention.stages: blocks go into VGG trunks only, not {m['backbone']}")
        elif problem := _attention_problem(att, channels):
            yield ("model.attention.kwargs", "model.attention.stages"), f"model.attention.kwargs: {problem}"


def _phase_sections(train: dict, prefix: str = "train"):
    """(dotted key, section) of every phase's section under ``train`` (those with a warmup)."""
    for name, node in train.items():
        if isinstance(node, dict):
            if "warmup_epochs" in node:
                yield f"{prefix}.{name}", node
            else:
                yield from _phase_sections(node, f"{prefix}.{name}")


def _attention_problem(att: dict, channels: list[int]) -> str | None:
    """Why a block (or layer) of ``att``'s kind cannot take its kwargs at one of its stages' widths
    (``channels``: per stage), or None; checked without building it (attention/args.py): whether the
    kwargs fit can depend on the channels (heads of even width)."""
    for width in sorted({channels[s - 1] for s in att["stages"]}):
        try:
            if att["replace_convs"]:
                check_layer(width, **att["kwargs"])
            else:
                check_attention(att["type"], width, att["identity_init"], **att["kwargs"])
        except (ValueError, TypeError) as e:  # TypeError: a key of kwargs that is not a name
            return f"{e} (stages {att['stages']})"
    return None


def load_config(path: str | os.PathLike, opts: Sequence[str] | Mapping[str, Any] | None = None) -> dict:
    """Load a YAML config with its ``_base_`` files, apply ``opts`` (``KEY=VALUE`` strings or a
    parsed ``{dotted key: value}`` mapping), fill defaults and validate. Returns a plain nested dict
    of every ``SCHEMA`` key; ``name`` defaults to the file stem, ``work_dir`` to ``work_dirs/<name>``."""
    path = os.fspath(path)
    cfg, origins = read_config(path, opts)
    return _resolve(cfg, origins, os.path.splitext(os.path.basename(path))[0])


def resolve_config(cfg: Mapping, name: str = "default") -> dict:
    """Fill defaults into an in-memory config and validate it (like ``load_config``)."""
    return _resolve(cfg, {}, name)


def default_config(name: str = "default") -> dict:
    return resolve_config({}, name)


def fill_defaults(cfg: Mapping) -> dict:
    """A resolved config saved by an earlier version (a checkpoint's), with every key added since
    at its default; the saved values are kept as they are (not validated again)."""
    filled = default_config()
    merge_into(filled, cfg, {}, "checkpoint")
    return filled


def _resolve(cfg: Mapping, origins: dict, default_name: str) -> dict:
    resolved = validate(SCHEMA, cfg, origins, _cross_checks)
    resolved["name"] = resolved["name"] or default_name
    resolved["work_dir"] = resolved["work_dir"] or os.path.join("work_dirs", resolved["name"])
    return resolved
