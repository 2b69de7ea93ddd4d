"""Typed configuration files: YAML or JSON loaded strictly into dataclasses.

Every config in ``configs/`` (model presets, training recipes) is plain data. This module turns a
file into a typed object and refuses anything it does not understand: an unknown key, a missing
required key or a value of the wrong type raises :class:`ConfigError` naming the key and the file,
before any model is built or any training step runs.

Supported field types: ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``None``,
``Optional[T]``/``T | None``, ``Literal[...]``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``,
``typing.Any`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

T = TypeVar("T")

__all__ = ["ConfigError", "read_config_file", "from_mapping", "load_typed_config", "check_call_kwargs"]


class ConfigError(ValueError):
    """A configuration file or mapping that does not match its schema."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml``/``.yml`` or ``.json`` file whose top level is a mapping.

    Args:
        path: the file.
    Returns:
        The parsed mapping.
    Raises:
        ConfigError: the file is missing, unparsable, of another extension, or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r}: expected a .yaml, .yml or .json file")
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid {path.suffix[1:]}: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` and return it converted (nested dataclasses built)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return _build_dataclass(tp, value, where)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def _build_dataclass(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed keys: {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {name!r}")
            continue
        kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def from_mapping(cls: type[T], data: Mapping[str, Any], source: str = "<config>") -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: a dataclass type.
        data: the values; nested mappings become nested dataclasses.
        source: where the data came from, used in error messages (a file name).
    Returns:
        An instance of ``cls``.
    Raises:
        ConfigError: unknown key, missing required key, wrong type, or a ``ValueError`` raised by
            the dataclass's own ``__post_init__`` validation; the message names the key and source.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"from_mapping needs a dataclass type, got {cls!r}")
    return _build_dataclass(cls, data, source)


def load_typed_config(path: str | Path, cls: type[T]) -> T:
    """Load a YAML/JSON file into dataclass ``cls``, strictly (see :func:`from_mapping`)."""
    return from_mapping(cls, read_config_file(path), source=str(path))


def check_call_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], where: str) -> None:
    """Refuse keys that ``fn`` (a constructor, typically) does not take by name.

    Useful for config dicts forwarded to classes such as ``PretrainedConfig`` subclasses that
    would otherwise accept and keep any unknown key silently.

    Raises:
        ConfigError: naming the unknown keys, ``where`` (a file name) and the accepted ones.
    """
    params = inspect.signature(fn).parameters
    accepted = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    accepted.discard("self")
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; accepted keys: {sorted(accepted)}")
