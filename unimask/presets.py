"""Model presets: named model sizes in ``configs/models/<name>.yaml``.

A preset names the sizes of the three models and the token layout they share::

    name: tiny
    description: ...
    token_layout: shapes        # "official" or "shapes"
    backbone: {...}             # LLaDA2MoeConfig keyword arguments (config.json keys)
    image_tokenizer: {...}      # image tokenizer config
    decoder: {...}              # decoder config

Sections are validated against the component's config class when that component is loaded
(:func:`check_call_kwargs`), so a typo fails with the key and the file named.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from unimask.config import ConfigError, load_typed_config

__all__ = ["ModelPreset", "available_presets", "load_preset", "preset_path"]


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """Sizes of the backbone, image tokenizer and decoder, plus the token layout they share."""

    name: str
    description: str = ""
    token_layout: Literal["official", "shapes"] = "official"
    backbone: dict[str, Any] = dataclasses.field(default_factory=dict)
    image_tokenizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    decoder: dict[str, Any] = dataclasses.field(default_factory=dict)


def _models_dir() -> Path:
    return Path(str(resources.files("unimask.configs"))) / "models"


def available_presets() -> list[str]:
    """Names of the shipped presets (files ``configs/models/*.yaml``)."""
    return sorted(p.stem for p in _models_dir().glob("*.yaml"))


def preset_path(name: str) -> Path:
    """Path of preset ``name``; ``ConfigError`` listing the available ones when unknown."""
    path = _models_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model preset {name!r}; available presets: {available_presets()}")
    return path


def load_preset(name_or_path: str | Path) -> ModelPreset:
    """Load a preset by name (``tiny``, ``llada2-uni``, ``shapes``) or from a YAML file path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml", ".json"):
        path = preset_path(str(name_or_path))
    return load_typed_config(path, ModelPreset)
