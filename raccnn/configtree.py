"""Nested YAML configs, independent of what they configure: ``_base_`` inheritance, dotted
``--opts`` overrides, and validation against a schema tree of ``Key`` leaves that reports every
problem as one ``ConfigError`` naming the dotted key and the file or option that set it.

A config file is a YAML mapping. ``_base_`` (a path or a list of paths, relative to the file) names
parents that are loaded first and merged in order, then the file's own keys on top: a mapping
merges key by key, any other value (lists included) replaces. Overrides are merged last. A key
written twice in one mapping of a file is refused (YAML itself would keep the last one silently).
"""
from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
import re
from dataclasses import dataclass
from collections.abc import Hashable
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from .errors import ConfigError
from .fileio import atomic_open


@dataclass(frozen=True)
class Key:
    """One leaf of the schema. ``type`` defaults to the default's type (a list's ``item`` to its
    first element's); ``int`` is accepted where ``float`` is expected, ``bool`` never as a number;
    ``min``, ``max`` and ``choices`` apply to a list's elements; ``dict`` is a free-form mapping;
    ``check(value)`` returns an error message or None; ``path``: a string value is a file or folder
    path, its leading ``~`` expanded to the home folder."""

    default: Any
    type: Any = None
    min: float | None = None
    max: float | None = None
    choices: Sequence | None = None
    item: type | None = None
    length: int | None = None
    nullable: bool = False
    check: Callable[[Any], str | None] | None = None
    path: bool = False

    @property
    def types(self) -> tuple:
        t = self.type or type(self.default)
        return t if isinstance(t, tuple) else (t,)

    @property
    def item_type(self):
        return self.item or (type(self.default[0]) if self.default else None)


def arg(fn, name: str) -> Any:
    """The default value of ``fn``'s argument ``name``: the one place that default is written."""
    return inspect.signature(fn).parameters[name].default


# --------------------------------------------------------------------------- loading
class DuplicateKeyError(ConfigError, yaml.YAMLError):
    """A key written twice in one YAML mapping (raised inside the YAML reader, which lets it through)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot, e.g. ``5e-4``, and refuses a key
    written twice in one mapping (where YAML keeps the last one and drops the first silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` keys may be overridden
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                if isinstance(key, Hashable) and key in lines:
                    raise DuplicateKeyError(f"duplicate key {key!r} at lines {lines[key]} and {line} (only the "
                                            f"last would count); keep one")
                if isinstance(key, Hashable):
                    lines[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))

Origins = dict  # dotted key -> the file or option that last set it


def merge_into(dst: dict, src: Mapping, origins: Origins, where: str, prefix: str = "") -> None:
    """Merge ``src`` into ``dst`` in place: mappings merge key by key, other values replace (deep
    copies); ``origins`` records ``where`` for every key it sets."""
    for key, value in src.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} under '{prefix.rstrip('.') or '<top>'}' is not a string")
        origins[prefix + key] = where
        if isinstance(value, Mapping):
            if not isinstance(dst.get(key), dict):
                dst[key] = {}
            merge_into(dst[key], value, origins, where, f"{prefix}{key}.")
        else:
            dst[key] = copy.deepcopy(value)


def load_yaml(path: str | os.PathLike) -> Any:
    """The YAML document of ``path`` (configs and grid files alike); a ``ConfigError`` naming the
    file when it is not valid YAML or writes a key twice in one mapping."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return yaml.load(text, Loader=_Loader)
    except DuplicateKeyError as e:
        raise ConfigError(f"{os.fspath(path)}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{os.fspath(path)}: invalid YAML: {e}") from e


def _load_file(path: str, cfg: dict, origins: Origins, chain: tuple = ()) -> None:
    seen = [os.path.realpath(p) for p in chain]
    if os.path.realpath(path) in seen:
        raise ConfigError("circular _base_ inheritance: " + " -> ".join([*chain[seen.index(os.path.realpath(path)):], path]))
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}" + (f" (included from {chain[-1]})" if chain else ""))
    raw = load_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    for base in bases:
        _load_file(os.path.normpath(os.path.join(os.path.dirname(path), base)), cfg, origins, (*chain, path))
    merge_into(cfg, raw, origins, path)


def _parse_opt(opt: str) -> tuple[str, Any]:
    key, sep, text = (part.strip() for part in opt.partition("="))
    if not sep or not key:
        raise ConfigError(f"invalid option {opt!r}: expected KEY=VALUE, e.g. train.lr=0.01")
    if not all(key.split(".")):
        raise ConfigError(f"invalid option {opt!r}: {key!r} is not a dotted key like a.b.c")
    if not text:
        raise ConfigError(f"invalid option {opt!r}: empty value (write KEY=null or KEY='' for null or an empty string)")
    try:
        return key, yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        problem = ": ".join(p for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
        raise ConfigError(f"invalid option {opt!r}: value is not valid YAML ({problem or str(e).splitlines()[0]})") from e


def parse_cli_opts(opts: Sequence[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a.b": 1, "c": [1, 2]}`` (values read as YAML; the last of a repeated key wins)."""
    return dict(_parse_opt(opt) for opt in opts or [])


def read_config(path: str, opts: Sequence[str] | Mapping[str, Any] | None) -> tuple[dict, Origins]:
    """The merged tree of ``path``, its ``_base_`` files and ``opts`` (``KEY=VALUE`` strings or a
    parsed ``{dotted key: value}`` mapping), and where each key was set."""
    cfg, origins = {}, {}
    _load_file(path, cfg, origins)
    items = ([(k, v, f"option {k}={_short(v)}") for k, v in opts.items()] if isinstance(opts, Mapping) else
             [(*_parse_opt(o), f"command-line option '{o}'") for o in opts or []])
    for key, value, where in items:
        nested = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        merge_into(cfg, nested, origins, where)
    return cfg, origins


def config_diff(a: Mapping, b: Mapping, ignore: Sequence[str] = ()) -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf that differs, keys in ``ignore`` aside."""
    def flat(cfg: Mapping, prefix: str = "") -> dict:
        out = {}
        for key, value in cfg.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, Mapping) and value else {prefix + key: value})
        return out

    fa, fb = flat(a), flat(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(fa.keys() | fb.keys()) if k not in ignore and fa.get(k) != fb.get(k)]


def save_config(cfg: Mapping, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML, atomically (temporary file, then ``os.replace``)."""
    text = yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------- validation
def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(word: Any, candidates: Sequence, prefix: str = "") -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _error(message: str, origins: Origins, *keys: str) -> ConfigError:
    """A ConfigError whose message ends with where the named keys (or their sections) were set."""
    def origin(dotted: str):
        parts = dotted.split(".")
        return next((origins[k] for k in (".".join(parts[:n]) for n in range(len(parts), 0, -1)) if k in origins), None)

    known = {key: origin(key) for key in keys if origin(key)}
    if not known:
        return ConfigError(message)
    if len(set(known.values())) == 1:
        return ConfigError(f"{message} (from {next(iter(known.values()))})")
    return ConfigError(f"{message} ({'; '.join(f'{k} from {w}' for k, w in known.items())})")


_NAMES = {str: "str", int: "int", float: "float", bool: "bool", list: "list", dict: "mapping"}


def _matches(t: type, value: Any) -> bool:
    if isinstance(value, bool):
        return t is bool
    return isinstance(value, {float: (int, float), list: (list, tuple), dict: Mapping}.get(t, t))


def _describe(value: Any) -> str:
    return "null" if value is None else f"{'mapping' if isinstance(value, Mapping) else type(value).__name__} {_short(value)}"


def _bounds(key: Key, value: Any, name: str) -> str | None:
    if key.choices is not None and value not in key.choices:
        return f"{name}: {_short(value)} is not one of {list(key.choices)}{_did_you_mean(value, key.choices)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name}: {value} is not a finite number"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key.min is not None and value < key.min:
            return f"{name}: {value} is below the minimum {key.min}"
        if key.max is not None and value > key.max:
            return f"{name}: {value} is above the maximum {key.max}"
    return None


def _problem(key: Key, value: Any, name: str) -> str | None:
    """What is wrong with ``value`` for ``key`` (type, list entries, choices, bounds, check), or None."""
    kind = next((t for t in key.types if value is not None and _matches(t, value)), None)
    if kind is None:
        wanted = " or ".join(f"list[{_NAMES[key.item_type]}]" if t is list and key.item_type else _NAMES[t] for t in key.types)
        return f"{name}: expected {wanted}, got {_describe(value)}"
    if kind is list:
        if key.length is not None and len(value) != key.length:
            return f"{name}: expected {key.length} entries, got {len(value)}"
        for i, v in enumerate(value):
            if key.item_type and (v is None or not _matches(key.item_type, v)):
                return f"{name}[{i}]: expected {_NAMES[key.item_type]}, got {_describe(v)}"
            if problem := _bounds(key, v, f"{name}[{i}]"):
                return problem
    elif kind is not dict and (problem := _bounds(key, value, name)):
        return problem
    return f"{name}: {message}" if key.check and (message := key.check(value)) else None


def _check_leaf(key: Key, value: Any, name: str, origins: Origins) -> Any:
    """The validated value: ints made floats where floats are expected, lists and mappings copied."""
    if value is None and key.nullable:
        return None
    if problem := _problem(key, value, name):
        raise _error(problem, origins, name)
    if isinstance(value, Mapping):
        return copy.deepcopy(dict(value))
    if isinstance(value, (list, tuple)):
        return [float(v) if key.item_type is float else v for v in value]
    if key.path and isinstance(value, str):
        return os.path.expanduser(value)
    return float(value) if float in key.types and not isinstance(value, (bool, str)) else value


def _fill(schema: dict, cfg: Any, origins: Origins, prefix: str = "") -> dict:
    section = prefix.rstrip(".")
    cfg = {} if cfg is None else cfg
    if not isinstance(cfg, Mapping):
        raise _error(f"{section}: expected a mapping, got {_describe(cfg)}", origins, section)
    for key in cfg:
        if key not in schema:
            level = f"under '{section}'" if section else "at the top level"
            raise _error(f"unknown key '{prefix}{key}'{_did_you_mean(key, list(schema), prefix)}; valid keys {level}: "
                         f"{', '.join(sorted(schema))}", origins, prefix + str(key))
    return {key: _fill(spec, cfg.get(key), origins, f"{prefix}{key}.") if isinstance(spec, dict) else
            _check_leaf(spec, cfg[key], prefix + key, origins) if key in cfg else copy.deepcopy(spec.default)
            for key, spec in schema.items()}


def validate(schema: dict, cfg: Mapping, origins: Origins, cross_checks: Callable[[dict], Iterable]) -> dict:
    """``cfg`` checked against ``schema`` with every missing key filled from it; then the first of
    ``cross_checks(resolved)``'s (keys, message) problems, if any, is raised."""
    resolved = _fill(schema, cfg, origins)
    for keys, message in cross_checks(resolved):
        raise _error(message, origins, *keys)
    return resolved
