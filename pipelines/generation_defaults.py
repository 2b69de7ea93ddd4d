"""Per-task default options of the pipelines, saved beside a checkpoint as ``generation_defaults.json``.

Sampler options use the names of `unimask.unimodal.sampler_config.SamplerConfig` (``steps`` is accepted
as an alias of ``num_inference_steps``); decoder options are ``decoder`` ("turbo" | "normal"),
``decoder_steps``, ``decoder_guidance_scale`` and ``resolution_multiplier`` (a defaults file sets step
counts per variant with ``turbo_decoder_steps`` / ``normal_decoder_steps``, since a count tuned for the
turbo decoder is wrong for the normal one; a call's ``decoder_steps`` wins); task options are the
lengths and sizes below. The values without a file are the public LLaDA2.0-Uni examples (reference page
"Sampler defaults"); guidance scales are zero-based (official cfg_scale 2.0 -> 1.0, cfg_text_scale 4.0
-> 3.0, see `unimask.unimodal.guidance`).

File format (every key optional; missing keys keep the defaults)::

    {"common": {...options for every task...},
     "understanding": {...}, "chat": {...}, "text_to_image": {...}, "thinking": {...},
     "edit": {...}, "interleaved": {...}}
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

from unimask.unimodal.sampler_config import SamplerConfig

GENERATION_DEFAULTS_FILE = "generation_defaults.json"
TASKS = ("understanding", "chat", "text_to_image", "thinking", "edit", "interleaved")

SAMPLER_OPTIONS = tuple(field.name for field in dataclasses.fields(SamplerConfig))
OPTION_ALIASES = {"steps": "num_inference_steps"}
DECODER_OPTIONS = (
    "decoder",
    "decoder_steps",
    "turbo_decoder_steps",
    "normal_decoder_steps",
    "decoder_guidance_scale",
    "resolution_multiplier",
    "copy_unchanged_patches",  # edits: reference pixels where the codes (and nearly the pixels) are unchanged
    "unchanged_patch_tolerance",  # the largest mean absolute pixel difference of a copied patch, in [0, 1]
)
TASK_OPTIONS = (
    "gen_length",  # masked TEXT positions of an answer (understanding, chat) or of one interleaved round
    "image_grid",  # (h, w) token grid of a generated image when no height/width is given
    "image_size",  # how input images are sized for the image tokenizer: a policy name or [H, W] pixels
    "thinking_length",  # masked TEXT positions of the thinking span (thinking text-to-image)
    "thinking_steps",  # steps per block of the thinking span
    "max_images",  # most images one interleaved answer may open
    "system_prompt",  # replaces the task's default system prompt when set
    "num_candidates",  # text-to-image: images drawn per sample, the one the backbone reads back best kept
    "candidate_temperature",  # text-to-image: sampling temperature of the candidates after the first
    "ranking_question",  # text-to-image: the question whose answer scores a candidate (the prompt)
    "ranking_source",  # text-to-image: what the ranking reads: "codes", "pixels" (decoded, re-encoded) or both
    "step_images",  # interleaved: "in_context" (an image round continues the sequence) or "tasks"
    "step_prompt_patterns",  # interleaved "tasks": [first, later] regexes whose group 1 is a step's prompt
)
ALL_OPTIONS = SAMPLER_OPTIONS + tuple(OPTION_ALIASES) + DECODER_OPTIONS + TASK_OPTIONS

_OFFICIAL: dict[str, dict[str, Any]] = {
    "common": {
        "block_length": 32,
        "threshold": 0.95,
        "temperature": 0.0,
        "decoder": "turbo",
        "resolution_multiplier": 2,
        "image_size": "understanding",
        "image_grid": [32, 32],
        "gen_length": 2048,
    },
    "understanding": {"num_inference_steps": 32},
    "chat": {"num_inference_steps": 32},
    "text_to_image": {"num_inference_steps": 8, "guidance_scale": 1.0},
    "thinking": {"num_inference_steps": 8, "guidance_scale": 1.0, "thinking_length": 4096, "thinking_steps": 32},
    "edit": {"num_inference_steps": 8, "text_guidance_scale": 3.0, "image_guidance_scale": 0.0},
    "interleaved": {"num_inference_steps": 32, "guidance_scale": 1.0, "gen_length": 256, "max_images": 4},
}


def canonical_option_name(name: str) -> str:
    """``steps`` -> ``num_inference_steps``; other names unchanged."""
    return OPTION_ALIASES.get(name, name)


def check_option_names(options: dict[str, Any], where: str) -> None:
    """Raise ``ValueError`` naming every key of ``options`` that is not a known option."""
    unknown = sorted(set(options) - set(ALL_OPTIONS))
    if unknown:
        raise ValueError(f"{where}: unknown options {unknown}; allowed options are {sorted(ALL_OPTIONS)}")


@dataclasses.dataclass
class GenerationDefaults:
    """Per-task defaults: ``tasks[section]`` maps option names to values (see the module docstring); they
    override the official defaults.

    ``options_for(task, overrides)`` merges official common -> official task -> common -> task -> call
    overrides and splits the result into sampler, decoder and task options.
    """

    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        checked: dict[str, dict[str, Any]] = {}
        for section, values in self.tasks.items():
            if section != "common" and section not in TASKS:
                raise ValueError(f"generation defaults section {section!r} is unknown; allowed: ['common', *{TASKS}]")
            values = {canonical_option_name(k): v for k, v in values.items()}
            check_option_names(values, f"generation defaults section {section!r}")
            checked[section] = values
        self.tasks = checked

    @classmethod
    def official(cls) -> GenerationDefaults:
        """The public LLaDA2.0-Uni example settings."""
        return cls()

    def updated(self, sections: dict[str, dict[str, Any]] | None) -> GenerationDefaults:
        """A copy with ``sections`` ({section: {option: value}}) merged in."""
        tasks = copy.deepcopy(self.tasks)
        for section, values in (sections or {}).items():
            tasks.setdefault(section, {}).update(values)
        return GenerationDefaults(tasks)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-serialisable copy of the sections that differ from the official defaults."""
        return copy.deepcopy(self.tasks)

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """Write ``generation_defaults.json`` into ``directory``; returns the path."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, GENERATION_DEFAULTS_FILE)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2)
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GenerationDefaults:
        """Read ``generation_defaults.json`` from ``directory``; the official defaults when it is absent."""
        path = os.path.join(directory, GENERATION_DEFAULTS_FILE)
        if not os.path.isfile(path):
            return cls()
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def options_for(self, task: str, overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
        """(sampler options, decoder options, task options) for ``task`` with call ``overrides``.

        Raises ``ValueError`` for an unknown task or option name; sampler values are validated by
        building a `SamplerConfig` (its errors name the option and the allowed range).
        """
        if task not in TASKS:
            raise ValueError(f"task={task!r} is unknown; allowed tasks are {list(TASKS)}")
        overrides = {canonical_option_name(k): v for k, v in overrides.items() if v is not None}
        check_option_names(overrides, "pipeline call")
        merged = {
            **_OFFICIAL["common"],
            **_OFFICIAL[task],
            **self.tasks.get("common", {}),
            **self.tasks.get(task, {}),
            **overrides,
        }
        sampler = {k: v for k, v in merged.items() if k in SAMPLER_OPTIONS}
        SamplerConfig(**sampler)
        decoder = {k: v for k, v in merged.items() if k in DECODER_OPTIONS}
        variant = decoder.get("decoder", "turbo")
        if variant not in ("turbo", "normal"):
            raise ValueError(f"decoder={variant!r} is unknown; allowed values are 'turbo' and 'normal'")
        per_variant_steps = {name: decoder.pop(f"{name}_decoder_steps", None) for name in ("turbo", "normal")}
        if "decoder_steps" not in overrides:
            default_variant = {k: v for k, v in merged.items() if k not in overrides}.get("decoder", "turbo")
            if variant != default_variant:
                decoder.pop("decoder_steps", None)  # a default count belongs to the default variant
            if per_variant_steps[variant] is not None:
                decoder["decoder_steps"] = per_variant_steps[variant]
        task_options = {k: v for k, v in merged.items() if k in TASK_OPTIONS}
        return sampler, decoder, task_options


# Small settings for tiny random checkpoints (tests, smoke runs): few tokens, 2x2 grids, 32 px inputs.
TINY_GENERATION_DEFAULTS: dict[str, dict[str, Any]] = {
    "common": {
        "block_length": 8,
        "num_inference_steps": 2,
        "gen_length": 8,
        "image_grid": [2, 2],
        "image_size": [32, 32],
        "resolution_multiplier": 1,
        "turbo_decoder_steps": 1,
        "normal_decoder_steps": 2,
        "thinking_length": 4,
        "thinking_steps": 2,
        "max_images": 3,
    },
}
