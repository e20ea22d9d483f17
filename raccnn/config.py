"""YAML configuration: inheritance, command-line overrides, defaults and validation.

A config file is a YAML mapping. It may list parent files under ``_base_``
(a path or a list of paths, relative to the including file). Parents are
loaded first, merged in order, and the file's own keys are merged on top:
a mapping merges key by key into the parent's mapping, any other value
(lists included) replaces the parent's value. Writing ``_delete_: true``
inside a mapping replaces the parent's mapping instead of merging into it.

Command-line overrides (``--opts train.lr=0.1 model.input_sizes=[64,64]``)
are applied after inheritance, then missing keys are filled from ``SCHEMA``
and the result is validated. Every accepted key is declared in ``SCHEMA``;
to add a setting, add one ``Field`` to it (and, if it depends on other
keys, a function to ``CROSS_CHECKS``).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import yaml

from .fileio import atomic_open

__all__ = [
    "ConfigError",
    "Field",
    "SCHEMA",
    "CROSS_CHECKS",
    "VGG_BACKBONES",
    "load_config",
    "resolve_config",
    "default_config",
    "save_config",
    "config_diff",
    "parse_cli_opts",
]


class ConfigError(ValueError):
    """A config file, an override or a resolved value is invalid."""


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Field:
    """One leaf of the schema.

    ``type`` is a type or a tuple of accepted types among ``str``, ``int``,
    ``float``, ``bool``, ``list`` and ``dict`` (a free-form mapping whose
    content is not checked). ``int`` values are accepted (and converted)
    where ``float`` is expected; ``bool`` is never accepted as a number.
    For lists, ``item`` is the element type and ``length`` a required length;
    ``choices``, ``min`` and ``max`` then apply to each element.
    ``check`` is an extra test: it gets the value and returns an error
    message, or ``None`` when the value is fine.
    """

    type: type | tuple[type, ...]
    default: Any
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    item: type | None = None
    length: int | None = None
    check: Callable[[Any], str | None] | None = None
    help: str = ""

    @property
    def types(self) -> tuple[type, ...]:
        return self.type if isinstance(self.type, tuple) else (self.type,)


VGG_BACKBONES = (
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
    "vgg19", "vgg19_bn", "vgg_small",
)
TIMM_PREFIX = "timm:"
# The names of raccnn.attention.build_attention (kept here so that loading a config needs no torch).
ATTENTION_TYPES = (
    "none", "se", "cbam", "nonlocal", "ge", "ge_theta", "eca", "gc", "danet", "sagan", "bam", "parsenet",
)


def _check_backbone(value: str) -> str | None:
    if value in VGG_BACKBONES:
        return None
    if value.startswith(TIMM_PREFIX):
        if value[len(TIMM_PREFIX):].strip():
            return None
        return f"'{value}' names no timm model (write 'timm:<model name>')"
    return (f"'{value}' is not one of {list(VGG_BACKBONES)} nor 'timm:<model name>'"
            f"{_did_you_mean(value, VGG_BACKBONES)}")


def _check_name(value: str) -> str | None:
    if not value or "/" in value or "\\" in value or value in (".", ".."):
        return f"{value!r} is not usable as a directory name"
    return None


OPTIMIZERS = ["sgd", "adam"]


def _stage(epochs: int, lr: float, optimizer: str = "sgd") -> dict:
    return {
        "epochs": Field(int, epochs, min=0),
        "lr": Field(float, lr, min=0.0),
        "optimizer": Field(str, optimizer, choices=OPTIMIZERS),
    }


def _alternating_step(lr: float, min_delta: float, optimizer: str = "sgd") -> dict:
    return {
        "lr": Field(float, lr, min=0.0),
        "optimizer": Field(str, optimizer, choices=OPTIMIZERS),
        "min_epochs": Field(int, 1, min=0),
        "max_epochs": Field(int, 4, min=0),
        "patience": Field(int, 1, min=0),
        "min_delta": Field(float, min_delta, min=0.0),
    }


SCHEMA: dict = {
    "name": Field(str, None, nullable=True, check=_check_name,
                  help="run name; defaults to the config file stem"),
    "work_dir": Field(str, None, nullable=True, help="defaults to work_dirs/<name>"),
    "seed": Field(int, 0),
    "device": Field(str, "auto", choices=["auto", "cpu", "cuda"]),
    "deterministic": Field(bool, False),
    "data": {
        "dataset": Field(str, "fgsynth", choices=["fgsynth", "cub", "folder"]),
        "root": Field(str, "data/fgsynth"),
        "synth": {
            "classes": Field(int, 10, min=2),
            "images_per_class": Field(int, 120, min=1),
            "size": Field(int, 160, min=8),
            "seed": Field(int, 0),
        },
        "resize": Field(int, 160, min=8),
        "crop": Field(int, 160, min=8),
        "flip": Field(bool, True),
        "val_fraction": Field(float, 0.1, min=0.0, max=0.9),
        "split_seed": Field(int, 0),
        "batch_size": Field(int, 32, min=1),
        "eval_batch_size": Field(int, 64, min=1),
        "num_workers": Field(int, 0, min=0),
        "skip_unreadable": Field(bool, False),
        "hit_parts": Field(list, [], item=str,
                           help="part names whose centre defines a part hit"),
    },
    "model": {
        "backbone": Field(str, "vgg_small", check=_check_backbone),
        "width": Field(int, 16, min=1, help="channels of vgg_small's first stage"),
        "pretrained": Field((bool, str), False,
                            help="true: torchvision weights; a string: local weights file"),
        "n_scales": Field(int, 3, min=2, max=5, help="RA-CNN needs a scale to zoom from and one to zoom into"),
        "input_sizes": Field(list, [64, 64, 64], item=int, min=8,
                             help="one input size per scale"),
        "dropout": Field(float, 0.0, min=0.0, max=1.0),
        "apn": {
            "hidden": Field(int, 256, min=1),
            "pool_size": Field(int, 4, min=1),
            "tl_min": Field(float, 0.1, min=0.0, max=0.5),
            "tl_max": Field(float, 0.5, min=0.0, max=0.5),
            "keep_inside": Field(bool, True),
        },
        "crop": {
            "k": Field(float, 10.0, min=0.0),
            "grad": Field(str, "mask", choices=["mask", "grid", "both"]),
        },
        "attention": {
            "type": Field(str, "none", choices=ATTENTION_TYPES,
                          help="block inserted at the end of each listed VGG stage"),
            "stages": Field(list, [], item=int, min=1, max=5, help="VGG stages (1-based) that get a block"),
            "identity_init": Field(bool, True, help="blocks return their input exactly at init"),
            "kwargs": Field(dict, {}, help="extra arguments of the block, e.g. {reduction: 8}"),
        },
        "proposer": Field(str, "apn", choices=["apn", "center", "heatmap", "oracle"],
                          help="what proposes each zoom square: the learned APN or a fixed rule"),
        "proposer_cfg": {
            "center_tl": Field(float, 0.25, min=0.0, max=0.5, help="half side of the 'center' square"),
            "heatmap_threshold": Field(float, 0.7, min=0.0, max=1.0, help="'heatmap' threshold on the [0, 1] map"),
            "oracle_margin": Field(float, 1.1, min=0.5, help="'oracle' square = margin x the part box's side"),
        },
    },
    "train": {
        "momentum": Field(float, 0.9, min=0.0, max=1.0),
        "weight_decay": Field(float, 5e-4, min=0.0),
        "log_interval": Field(int, 20, min=1),
        "pretrain_cls": _stage(epochs=8, lr=0.05),
        "init_apn": {**_stage(epochs=3, lr=1e-3, optimizer="adam"), "tl": Field(float, 0.25, min=0.0, max=0.5)},
        "alternate": {
            "rounds": Field(int, 3, min=0),
            "margin": Field(float, 0.05, min=0.0),
            "cls": _alternating_step(lr=0.01, min_delta=1e-3),
            "apn": _alternating_step(lr=1e-3, min_delta=1e-4, optimizer="adam"),
        },
        "fusion": {**_stage(epochs=3, lr=0.05), "epochs": Field(int, 3, min=1, help="best.pt is a fused model")},
    },
    "eval": {
        "split": Field(str, "test", choices=["val", "test"]),
    },
}


# Checks that involve several keys. Each gets the resolved config and returns
# None, or the dotted keys involved and an error message.
def _check_input_sizes(cfg: dict):
    sizes, n = cfg["model"]["input_sizes"], cfg["model"]["n_scales"]
    if len(sizes) != n:
        return (("model.input_sizes", "model.n_scales"),
                f"model.input_sizes has {len(sizes)} entries {sizes} but model.n_scales is {n}"
                " (one input size per scale)")
    return None


def _check_tl_range(cfg: dict):
    apn = cfg["model"]["apn"]
    if not 0 < apn["tl_min"] <= apn["tl_max"] <= 0.5:
        return (("model.apn.tl_min", "model.apn.tl_max"),
                "need 0 < model.apn.tl_min <= model.apn.tl_max <= 0.5, got "
                f"tl_min={apn['tl_min']} and tl_max={apn['tl_max']}")
    return None


def _check_crop_size(cfg: dict):
    data = cfg["data"]
    if data["crop"] > data["resize"]:
        return (("data.crop", "data.resize"),
                f"data.crop ({data['crop']}) must not exceed data.resize ({data['resize']})")
    return None


def _check_alternate_epochs(cfg: dict):
    for step in ("cls", "apn"):
        s = cfg["train"]["alternate"][step]
        if s["min_epochs"] > s["max_epochs"]:
            key = f"train.alternate.{step}"
            return ((f"{key}.min_epochs", f"{key}.max_epochs"),
                    f"{key}.min_epochs ({s['min_epochs']}) must not exceed "
                    f"{key}.max_epochs ({s['max_epochs']})")
    return None


CROSS_CHECKS: list[Callable[[dict], tuple[tuple[str, ...], str] | None]] = [
    _check_input_sizes,
    _check_tl_range,
    _check_crop_size,
    _check_alternate_epochs,
]


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot, e.g. ``5e-4``."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


# --------------------------------------------------------------------------- loading


# ``origins`` maps dotted keys to where they were set (a file path or an option),
# so that validation errors can say where a bad value came from.
Origins = dict[str, str]


def _forget(origins: Origins, dotted: str) -> None:
    for key in [k for k in origins if k == dotted or k.startswith(dotted + ".")]:
        del origins[key]


def _merge(dst: dict, src: Mapping, origins: Origins, src_origins: Mapping, where: str,
           prefix: str = "") -> None:
    """Merge ``src`` into ``dst`` in place (see the module docstring for the rules)."""
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} under '{prefix.rstrip('.') or '<top>'}'"
                              " is not a string")
        dotted = prefix + key
        if isinstance(value, Mapping):
            value = dict(value)
            delete = value.pop("_delete_", False)
            if not isinstance(delete, bool):
                raise ConfigError(f"{where}: {dotted}._delete_ must be true or false,"
                                  f" got {delete!r}")
            if delete or not isinstance(dst.get(key), dict):
                _forget(origins, dotted)
                dst[key] = {}
            if dotted in src_origins:
                origins[dotted] = src_origins[dotted]
            _merge(dst[key], value, origins, src_origins, where, dotted + ".")
        else:
            _forget(origins, dotted)
            dst[key] = copy.deepcopy(value)
            if dotted in src_origins:
                origins[dotted] = src_origins[dotted]


def _all_keys(tree: Mapping, prefix: str = ""):
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        yield dotted
        if isinstance(value, Mapping):
            yield from _all_keys(value, dotted + ".")


def _load_file(path: str, chain: tuple[str, ...]) -> tuple[dict, Origins]:
    seen = [os.path.realpath(p) for p in chain]
    if os.path.realpath(path) in seen:
        cycle = " -> ".join([*chain[seen.index(os.path.realpath(path)):], path])
        raise ConfigError(f"circular _base_ inheritance: {cycle}")
    if not os.path.isfile(path):
        where = f" (included from {chain[-1]})" if chain else ""
        raise ConfigError(f"config file not found: {path}{where}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = _yaml_load(f.read())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(raw).__name__}")

    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")

    cfg: dict = {}
    origins: Origins = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        base_cfg, base_origins = _load_file(base_path, (*chain, path))
        _merge(cfg, base_cfg, origins, base_origins, where=base_path)
    _merge(cfg, raw, origins, dict.fromkeys(_all_keys(raw), path), where=path)
    return cfg, origins


def _parse_opt(opt: str) -> tuple[str, Any]:
    key, sep, text = opt.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"invalid option {opt!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"invalid option {opt!r}: {key!r} is not a dotted key like a.b.c")
    if not text.strip():
        raise ConfigError(f"invalid option {opt!r}: empty value"
                          " (write KEY=null or KEY='' for null or an empty string)")
    try:
        return key, _yaml_load(text)
    except yaml.YAMLError as e:
        problem = ": ".join(p for p in (getattr(e, "context", None), getattr(e, "problem", None))
                           if p) or str(e).splitlines()[0]
        raise ConfigError(f"invalid option {opt!r}: value is not valid YAML ({problem})") from e


def parse_cli_opts(opts: Sequence[str] | None) -> dict[str, Any]:
    """Parse ``["a.b=1", "c=[1,2]"]`` into ``{"a.b": 1, "c": [1, 2]}``.

    Values are read as YAML, so ``true``, ``3``, ``0.1``, ``1e-3``, ``[64,64]``
    and ``null`` have their usual meaning; anything else is a string.
    Meant for an argparse option declared with ``nargs="*"`` (or ``"+"``).
    A key given twice keeps its last value.
    """
    return dict(_parse_opt(opt) for opt in opts or [])


def _apply_opt(cfg: dict, origins: Origins, key: str, value: Any, where: str) -> None:
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    _merge(cfg, nested, origins, dict.fromkeys(_all_keys(nested), where), where=where)


def load_config(path: str | os.PathLike, opts: Sequence[str] | Mapping[str, Any] | None = None
                ) -> dict:
    """Load a YAML config with its ``_base_`` files, apply ``opts``, fill defaults, validate.

    ``opts`` is a list of ``KEY=VALUE`` strings (see ``parse_cli_opts``) or an
    already parsed ``{dotted key: value}`` mapping. Returns a plain nested dict
    holding every key of ``SCHEMA``; ``name`` defaults to the file stem and
    ``work_dir`` to ``work_dirs/<name>``. Raises ``ConfigError``.
    """
    path = os.fspath(path)
    cfg, origins = _load_file(path, chain=())
    if isinstance(opts, Mapping):
        for key, value in opts.items():
            _apply_opt(cfg, origins, key, value, where=f"option {key}={_short(value)}")
    else:
        for opt in opts or []:
            key, value = _parse_opt(opt)
            _apply_opt(cfg, origins, key, value, where=f"command-line option '{opt}'")
    stem = os.path.splitext(os.path.basename(path))[0]
    return _resolve(cfg, origins, default_name=stem)


def resolve_config(cfg: Mapping, name: str = "default") -> dict:
    """Fill defaults into an in-memory config and validate it (like ``load_config``)."""
    return _resolve(cfg, {}, default_name=name)


def default_config(name: str = "default") -> dict:
    """The config made of schema defaults only."""
    return resolve_config({}, name=name)


def config_diff(a: Mapping, b: Mapping, ignore: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs, keys in ``ignore`` aside."""
    def flat(cfg: Mapping, prefix: str = "") -> dict:
        out = {}
        for key, value in cfg.items():
            if isinstance(value, Mapping) and value:
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    fa, fb = flat(a), flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys())
            if k not in ignore and fa.get(k) != fb.get(k)]


def save_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML, atomically (temporary file, then ``os.replace``)."""
    text = yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _plain(value: Any) -> Any:
    """Turn tuples into lists and mappings into dicts so YAML stays plain."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- validation


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(word: Any, candidates: Sequence[Any], prefix: str = "") -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _origin_of(origins: Origins, dotted: str) -> str | None:
    """Where ``dotted`` (or its closest set ancestor) was set."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        where = origins.get(".".join(parts[:n]))
        if where:
            return where
    return None


def _error(message: str, origins: Origins, *keys: str) -> ConfigError:
    """A ConfigError whose message ends with where the named keys were set, when known."""
    known = {key: _origin_of(origins, key) for key in keys}
    known = {key: where for key, where in known.items() if where}
    if not known:
        return ConfigError(message)
    if len(known) == 1 or len(set(known.values())) == 1:
        return ConfigError(f"{message} (from {next(iter(known.values()))})")
    sources = "; ".join(f"{key} from {where}" for key, where in known.items())
    return ConfigError(f"{message} ({sources})")


_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "mapping"}


def _type_name(field: Field) -> str:
    names = []
    for t in field.types:
        name = _TYPE_NAMES.get(t, t.__name__)
        if t is list and field.item is not None:
            name = f"list[{_TYPE_NAMES.get(field.item, field.item.__name__)}]"
        names.append(name)
    return " or ".join(names)


def _describe(value: Any) -> str:
    name = "mapping" if isinstance(value, Mapping) else type(value).__name__
    return f"{name} {_short(value)}"


def _matches(t: type, value: Any) -> bool:
    if isinstance(value, bool):
        return t is bool
    if t is float:
        return isinstance(value, (int, float))
    if t is list:
        return isinstance(value, (list, tuple))
    if t is dict:
        return isinstance(value, Mapping)
    return isinstance(value, t)


def _coerce(t: type, value: Any) -> Any:
    if t is float:
        return float(value)
    if t is list:
        return list(value)
    if t is dict:
        return copy.deepcopy(dict(value))
    return value


def _check_scalar(field: Field, value: Any, key: str) -> str | None:
    """Choices and bounds of one value (or one list element); an error message or None."""
    if field.choices is not None and value not in field.choices:
        return (f"{key}: {_short(value)} is not one of {list(field.choices)}"
                f"{_did_you_mean(value, field.choices)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if field.min is not None and value < field.min:
            return f"{key}: {value} is below the minimum {field.min}"
        if field.max is not None and value > field.max:
            return f"{key}: {value} is above the maximum {field.max}"
    return None


def _check_field(field: Field, value: Any, key: str, origins: Origins) -> Any:
    """Validate one leaf value; returns it (ints converted where floats are expected)."""
    if value is None:
        if field.nullable:
            return None
        raise _error(f"{key}: expected {_type_name(field)}, got null", origins, key)
    kind = next((t for t in field.types if _matches(t, value)), None)
    if kind is None:
        raise _error(f"{key}: expected {_type_name(field)}, got {_describe(value)}", origins, key)
    value = _coerce(kind, value)

    if kind is list:
        if field.length is not None and len(value) != field.length:
            raise _error(f"{key}: expected {field.length} entries, got {len(value)}",
                         origins, key)
        items = []
        for i, item in enumerate(value):
            item_key = f"{key}[{i}]"
            if field.item is not None:
                if item is None or not _matches(field.item, item):
                    raise _error(f"{item_key}: expected {_TYPE_NAMES[field.item]}, got "
                                 f"{_describe(item) if item is not None else 'null'}",
                                 origins, key)
                item = _coerce(field.item, item)
            message = _check_scalar(field, item, item_key)
            if message:
                raise _error(message, origins, key)
            items.append(item)
        value = items
    elif kind is not dict:
        message = _check_scalar(field, value, key)
        if message:
            raise _error(message, origins, key)

    if field.check is not None:
        message = field.check(value)
        if message:
            raise _error(f"{key}: {message}", origins, key)
    return value


def _fill_and_check(schema: dict, cfg: Any, origins: Origins, prefix: str = "") -> dict:
    """Recursively check ``cfg`` against ``schema``; returns a new dict in schema order."""
    section = prefix.rstrip(".")
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise _error(f"{section}: expected a mapping, got {_describe(cfg)}", origins, section)

    for key in cfg:
        if key not in schema:
            dotted = prefix + str(key)
            hint = _did_you_mean(key, list(schema), prefix)
            level = f"under '{section}'" if section else "at the top level"
            raise _error(f"unknown key '{dotted}'{hint}; valid keys {level}: "
                         f"{', '.join(sorted(schema))}", origins, dotted)

    resolved = {}
    for key, spec in schema.items():
        dotted = prefix + key
        if isinstance(spec, dict):
            resolved[key] = _fill_and_check(spec, cfg.get(key), origins, dotted + ".")
        elif key in cfg:
            resolved[key] = _check_field(spec, cfg[key], dotted, origins)
        else:
            resolved[key] = copy.deepcopy(spec.default)
    return resolved


def _resolve(cfg: Mapping, origins: Origins, default_name: str) -> dict:
    resolved = _fill_and_check(SCHEMA, cfg, origins)
    for check in CROSS_CHECKS:
        problem = check(resolved)
        if problem:
            keys, message = problem
            raise _error(message, origins, *keys)
    if resolved["name"] is None:
        resolved["name"] = default_name
    if resolved["work_dir"] is None:
        resolved["work_dir"] = os.path.join("work_dirs", resolved["name"])
    return resolved
