"""Model presets: named model sizes in ``configs/models/<name>.yaml``.

A preset names the sizes of the three models and the token layout they share::

    name: tiny
    description: ...
    token_layout: shapes        # "official" or "shapes"
    backbone: tiny              # a preset in configs/models/backbone/<name>.yaml, or an inline mapping
    image_tokenizer: {...}      # image tokenizer sizes
    decoder: tiny               # a preset in configs/models/decoder/<name>.yaml, or an inline mapping

Component presets (``configs/models/backbone/*.yaml``: LLaDA2MoeConfig / config.json keys;
``configs/models/decoder/*.yaml``: decoder sections) are YAML like everything in ``configs/``.
Sections are validated against the component's config class when that component is built, so a
typo fails with the key and the file named.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from unimask.config import ConfigError, load_typed_config, read_config_file

__all__ = [
    "ModelPreset",
    "available_presets",
    "load_preset",
    "preset_path",
    "available_component_presets",
    "component_preset_path",
    "read_component_preset",
]

COMPONENTS = ("backbone", "decoder")


@dataclasses.dataclass(frozen=True)
class ModelPreset:
    """Sizes of the backbone, image tokenizer and decoder, plus the token layout they share."""

    name: str
    description: str = ""
    token_layout: Literal["official", "shapes"] = "official"
    backbone: str | dict[str, Any] = dataclasses.field(default_factory=dict)
    image_tokenizer: dict[str, Any] = dataclasses.field(default_factory=dict)
    decoder: str | dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for component in COMPONENTS:
            value = getattr(self, component)
            if isinstance(value, str):
                component_preset_path(component, value)  # fails early, listing the names

    def component(self, name: str) -> dict[str, Any]:
        """The ``backbone`` or ``decoder`` section as a mapping, reading a named preset's file."""
        value = getattr(self, name)
        return read_component_preset(name, value) if isinstance(value, str) else dict(value)


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


def available_component_presets(component: str) -> list[str]:
    """Names of ``configs/models/<component>/*.yaml`` (component: ``backbone`` or ``decoder``)."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {list(COMPONENTS)}, got {component!r}")
    return sorted(p.stem for p in (_models_dir() / component).glob("*.yaml"))


def component_preset_path(component: str, name: str) -> Path:
    """Path of ``configs/models/<component>/<name>.yaml``; ``ConfigError`` listing names when unknown."""
    path = _models_dir() / component / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown {component} preset {name!r}; available: {available_component_presets(component)}"
        )
    return path


def read_component_preset(component: str, name: str) -> dict[str, Any]:
    """The mapping stored in ``configs/models/<component>/<name>.yaml``."""
    return read_config_file(component_preset_path(component, name))
