"""Validation and normalisation of the user-facing inputs of a pipeline call.

Every function raises ``ValueError`` naming the argument (``prompt``, ``image``, ``generator``,
``output_type``, ``num_images_per_prompt``) with the value and what is allowed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import torch

OUTPUT_TYPES = ("pil", "np", "pt", "tokens")
IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)


def check_prompts(prompt: Any, name: str = "prompt") -> list[str]:
    """A string or a non-empty list of strings -> list of prompts; None, empty or blank strings raise."""
    if prompt is None:
        raise ValueError(f"{name} is required: pass a string or a list of strings")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}")
    for index, text in enumerate(prompts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{index}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{name}[{index}] is an empty string; give some text")
    return list(prompts)


def _check_image(image: Any, where: str) -> Any:
    if not isinstance(image, IMAGE_TYPES):
        raise ValueError(
            f"{where} has unsupported type {type(image).__name__}; allowed types are PIL.Image.Image, "
            "numpy.ndarray and torch.Tensor"
        )
    return image


def _as_image_list(entry: Any, where: str) -> list[Any]:
    """One image, a 4-D batch, or a list of images -> list of single images."""
    if isinstance(entry, (np.ndarray, torch.Tensor)) and entry.ndim == 4:
        return [entry[i] for i in range(entry.shape[0])]
    if isinstance(entry, (list, tuple)):
        return [_check_image(item, f"{where}[{i}]") for i, item in enumerate(entry)]
    return [_check_image(entry, where)]


def images_per_prompt(image: Any, num_prompts: int) -> list[list[Any]]:
    """Distribute ``image`` over ``num_prompts`` prompts.

    None -> no image for any prompt. With one prompt: a single image, or a list / 4-D batch of images
    (several references). With several prompts: a single image is shared by all; a list must have one
    entry per prompt, each an image or a list of images. Returns one list of images per prompt.
    """
    if image is None:
        return [[] for _ in range(num_prompts)]
    if isinstance(image, IMAGE_TYPES) and not (isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4):
        return [[_check_image(image, "image")] for _ in range(num_prompts)]
    if num_prompts == 1:
        images = _as_image_list(image, "image")
        if not images:
            raise ValueError("image is an empty list; pass at least one image or None")
        return [images]
    if not isinstance(image, (list, tuple)) or len(image) != num_prompts:
        raise ValueError(
            f"image must be one image or a list with one entry per prompt ({num_prompts}), got "
            f"{len(image) if isinstance(image, (list, tuple)) else type(image).__name__}"
        )
    return [_as_image_list(entry, f"image[{i}]") for i, entry in enumerate(image)]


def check_output_type(output_type: str) -> str:
    """Return ``output_type`` if it is one of `OUTPUT_TYPES`."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is unknown; allowed values are {list(OUTPUT_TYPES)}")
    return output_type


def check_count(value: Any, name: str) -> int:
    """An int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be an int >= 1")
    return value


def generators_for(generator: Any, count: int) -> torch.Generator | list[torch.Generator] | None:
    """None, one ``torch.Generator`` (shared) or a list with one generator per output sample (``count``)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != count:
            raise ValueError(
                f"generator list has {len(generator)} entries; it needs one per output sample ({count} = "
                "prompts x num_images_per_prompt)"
            )
        return list(generator)
    raise ValueError(f"generator must be None, a torch.Generator or a list of them, got {type(generator).__name__}")


def split_image_batch(images: Any) -> list[Any]:
    """A decoder result (list of PIL, (B, H, W, 3) array, (B, 3, H, W) tensor or list) -> list of images."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return [images[i] for i in range(images.shape[0])]
    return list(images)
