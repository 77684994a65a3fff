"""Dataclass configs from TOML files plus ``section.key=value`` overrides.

Configs are plain nested dataclasses; a TOML file fills them, and unknown keys or wrong types
are refused with the file and the dotted key named, because a typo silently ignored would
run a different experiment than the one asked for.

One rule for paths, in every config: a relative path written in a config file resolves
against that file's folder (as most tools do), so a config works from any working
directory; a path given on the command line (``--set``, ``--run-dir``) and a default are
relative to the working directory, like every other command-line path. Fields declare
that they hold a path with ``metadata=PATH`` (or ``MODEL_PATH``).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from learn_features.errors import LearnFeaturesError

T = TypeVar("T")

#: Field metadata: the value is a filesystem path (or a list of paths).
PATH: dict[str, Any] = {"path": True}
#: Field metadata: a model folder, unless the value names a shipped model (``shipped:smollm2``).
MODEL_PATH: dict[str, Any] = {"path": True, "unless_prefix": "shipped:"}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_scalar(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        # A closed set of choices (e.g. a data format): anything else is a typo, not a new mode.
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise LearnFeaturesError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_scalar(value, option, where)
            except LearnFeaturesError:
                continue
        raise LearnFeaturesError(f"{where}: {value!r} does not fit type {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise LearnFeaturesError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = typing.get_args(tp) or (Any,)
        return [_check_scalar(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise LearnFeaturesError(f"{where}: expected a table, got {value!r}")
        _, value_type = typing.get_args(tp) or (str, Any)
        return {k: _check_scalar(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise LearnFeaturesError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """Build ``cls`` from ``data``; nested dataclass fields take nested tables."""
    if not isinstance(data, dict):
        raise LearnFeaturesError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    retired = getattr(cls, "RETIRED_KEYS", {})  # a key of an older vocabulary: say its new spelling
    for key in data:
        if key in retired:
            raise LearnFeaturesError(f"{where}.{key} {retired[key]}" if where else f"{key} {retired[key]}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise LearnFeaturesError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        key_where = f"{where}.{key}" if where else key
        tp = hints[key]
        kwargs[key] = from_dict(tp, value, key_where) if _is_dataclass_type(tp) else _check_scalar(value, tp, key_where)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise LearnFeaturesError(f"{where or cls.__name__}: {exc}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=1e-3`` -> (["train", "lr"], 0.001); values are TOML, bare words are strings."""
    if "=" not in text:
        raise LearnFeaturesError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def resolve_paths(cls: type, data: Any, base: Path) -> None:
    """Resolve, in place, the relative paths of ``data`` (a config file's tables) against ``base``.

    Only fields marked ``PATH``/``MODEL_PATH`` are touched; values of the wrong type are left
    for ``from_dict`` to refuse with the dotted key.
    """
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        if _is_dataclass_type(hints[f.name]):
            resolve_paths(hints[f.name], data[f.name], base)
        elif f.metadata.get("path"):
            data[f.name] = _resolve_path(data[f.name], base, f.metadata.get("unless_prefix"))


def _resolve_path(value: Any, base: Path, unless_prefix: str | None) -> Any:
    if isinstance(value, list):
        return [_resolve_path(v, base, unless_prefix) for v in value]
    if not isinstance(value, str) or (unless_prefix and value.startswith(unless_prefix)):
        return value
    p = Path(value).expanduser()
    # normpath folds the "../.." of a config kept in a subfolder, so outputs show runs/..., data/... paths.
    return str(p) if p.is_absolute() else os.path.normpath(base / p)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """``cls`` from the TOML file at ``path`` (paths in it resolved against its folder), then ``overrides``."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LearnFeaturesError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise LearnFeaturesError(f"{path}: invalid TOML: {exc}") from None
        resolve_paths(cls, data, path.parent)
        source = str(path)
    for override in overrides or []:
        keys, value = parse_override(override)
        table = data
        for key in keys[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                raise LearnFeaturesError(f"override {override!r}: {key!r} is not a section")
        table[keys[-1]] = value
    try:
        return from_dict(cls, data, "")
    except LearnFeaturesError as exc:
        raise LearnFeaturesError(f"{source}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
