"""The ``tokenizer_siglip`` stage: SigLIP contrastive training of the image tokenizer's vision tower.

Samples: one image plus a caption (json ``"caption"``, or ``"text"``). Captions are encoded as
UTF-8 bytes (id = byte + 1, 0 = padding), so no text tokenizer is needed; ``text_vocab_size`` must
be >= 257. Images are resized to ``image_size`` (a multiple of 16) and CLIP-normalised.

``model``: :class:`unimask.tokenizers.image_tokenizer_training.ImageTokenizerTrainingConfig` keys.
``stage_options``: ``image_size`` (int, default 64); ``negative_word_groups`` (list of word lists,
default none): for every caption one hard negative is made by replacing one occurrence of a word of a
group with another word of that group (``"a small red circle"`` -> ``"a small red square"``), chosen
per sample and step, so the tower must see what in-batch negatives rarely test (each word of a group
is a whole word of the captions). Captions without such a word borrow the next caption of the batch.
``region_loss_weight`` (float, default 0): > 0 adds the region loss of ``siglip_stage_loss`` on the
samples' grounded phrases, json ``"regions"``: ``[{"box": [x0, y0, x1, y1], "text": str}]`` in pixels
of the stored image (end exclusive; Shapes World caption shards carry them); samples without regions
add none. A region may also list ``"cells"``: flat indices (row * grid + column) of the 16 px patches
it owns at ``image_size``, used instead of the patches its box touches.
``region_per_patch`` (bool, default false): every patch of a region becomes a region of its own, so
each patch feature (not the mean of a box) must match its phrase: dense grounding, with regions that
list ``cells`` (Shapes World caption shards written with ``patch_regions=true`` name every patch).
Phrases are encoded once per distinct text.
``position_free`` (bool, default false): zero the tower's absolute position embeddings and keep them
frozen, so a patch's features depend on its pixels and the image's content but never on where the
patch is (the token grid already says where). A plain background then gets the same code in every
cell of an image, which a grid-position embedding lets drift from cell to cell.
Export: ``vision_tower/model.safetensors`` + ``config.json`` (the tower, for the VQ stage's
``stage_options.init_vision``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from unimask.config import ConfigError, from_mapping
from unimask.training.stages import Stage

__all__ = ["SigLIPStage", "hard_negative_caption", "pixel_batch", "training_config_from_recipe"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def training_config_from_recipe(recipe) -> Any:
    """The ``ImageTokenizerTrainingConfig`` of ``recipe.model`` (strict: unknown keys raise ConfigError)."""
    from unimask.tokenizers.image_tokenizer_training import ImageTokenizerTrainingConfig

    return from_mapping(ImageTokenizerTrainingConfig, dict(recipe.model), source="model")


def pixel_batch(samples: list[dict[str, Any]], image_size: int) -> torch.Tensor:
    """First image of each sample, resized to ``image_size`` and CLIP-normalised: (B, 3, S, S) float."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = []
    for sample in samples:
        if not sample["images"]:
            raise ValueError(f"sample {sample.get('__key__')!r} has no image")
        image = sample["images"][0].convert("RGB").resize((image_size, image_size))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        pixels.append((array - mean) / std)
    return torch.stack(pixels)


def hard_negative_caption(caption: str, word_groups: list[list[str]], rng: random.Random) -> str | None:
    """``caption`` with one whole-word occurrence of a group's word replaced by another word of its
    group (occurrence and replacement drawn from ``rng``); None when no group word occurs."""
    spans = []
    for group in word_groups:
        for word in group:
            spans += [(match.start(), match.end(), group) for match in re.finditer(rf"\b{re.escape(word)}\b", caption)]
    if not spans:
        return None
    start, end, group = rng.choice(sorted(spans, key=lambda span: span[0]))
    replacement = rng.choice([word for word in group if word != caption[start:end]])
    return caption[:start] + replacement + caption[end:]


def _caption_ids(captions: list[str], length: int) -> torch.Tensor:
    """Byte ids (byte + 1, 0 = padding) of captions: (B, length) int64."""
    text_ids = torch.zeros((len(captions), length), dtype=torch.long)
    for row, caption in enumerate(captions):
        encoded = list(caption.encode("utf-8"))[:length] or [0]
        text_ids[row, : len(encoded)] = torch.tensor(encoded) + 1
    return text_ids


class SigLIPStage(Stage):
    """Sigmoid contrastive loss between the vision tower and a tiny caption encoder."""

    name = "tokenizer_siglip"

    def check_config(self) -> None:
        self.config = training_config_from_recipe(self.recipe)
        options = dict(self.recipe.stage_options)
        self.image_size = options.pop("image_size", 64)
        self.negative_word_groups = options.pop("negative_word_groups", None) or []
        self.region_loss_weight = options.pop("region_loss_weight", 0.0)
        self.position_free = options.pop("position_free", False)
        self.region_per_patch = options.pop("region_per_patch", False)
        if options:
            raise ConfigError(f"stage_options: unknown key(s) {sorted(options)} for stage {self.name!r}; allowed: "
                              "['image_size', 'negative_word_groups', 'position_free', 'region_loss_weight', 'region_per_patch']")
        for key in ("position_free", "region_per_patch"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"stage_options.{key}={getattr(self, key)!r} must be true or false")
        if isinstance(self.region_loss_weight, bool) or not isinstance(self.region_loss_weight, (int, float)) or self.region_loss_weight < 0:
            raise ConfigError(f"stage_options.region_loss_weight={self.region_loss_weight!r} must be a number >= 0")
        groups = self.negative_word_groups
        if not isinstance(groups, list) or not all(
            isinstance(group, list) and len(group) >= 2 and all(isinstance(word, str) and word.strip() for word in group)
            for group in groups
        ):
            raise ConfigError(f"stage_options.negative_word_groups={groups!r} must be a list of lists of at least two non-empty words")
        self.current_step = 0
        if not isinstance(self.image_size, int) or self.image_size % 16 or self.image_size < 16:
            raise ConfigError(f"stage_options.image_size={self.image_size!r} must be a positive multiple of 16")
        if self.config.text_vocab_size < 257:
            raise ConfigError(f"model.text_vocab_size={self.config.text_vocab_size} must be >= 257 (byte-level captions)")

    def build_model(self) -> nn.Module:
        from unimask.tokenizers.image_tokenizer_training import build_siglip_stage

        model = build_siglip_stage(self.config)
        if self.position_free:
            position_embedding = model.visual.embeddings.position_embedding
            with torch.no_grad():
                position_embedding.weight.zero_()
            position_embedding.requires_grad_(False)
        return model

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.visual.blocks) if hasattr(model.visual, "blocks") else []

    def on_step(self, step: int) -> None:
        self.current_step = step

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        length = self.config.text_max_length
        captions = [sample["json"].get("caption", sample["json"].get("text", "")) for sample in samples]
        text_ids = _caption_ids(captions, length)
        batch = {"pixel_values": pixel_batch(samples, self.image_size), "text_ids": text_ids, "text_mask": text_ids > 0}
        if self.negative_word_groups:
            negatives = []
            for row, (sample, caption) in enumerate(zip(samples, captions)):
                rng = random.Random(f"{sample.get('__key__')}:{self.current_step}")
                negative = hard_negative_caption(caption, self.negative_word_groups, rng)
                negatives.append(negative if negative is not None else captions[(row + 1) % len(captions)])
            batch["negative_text_ids"] = _caption_ids(negatives, length)
            batch["negative_text_mask"] = batch["negative_text_ids"] > 0
        if self.region_loss_weight > 0:
            batch.update(self._regions(samples))
        return batch

    def _regions(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """``region_sample``, ``region_cells``, ``region_phrase_ids`` (distinct phrases) and
        ``region_phrase_index`` of the samples' json ``regions`` (boxes scaled to ``image_size``); empty
        dict when no sample has one."""
        grid = self.image_size // 16
        owners, cells, phrases = [], [], []
        for index, sample in enumerate(samples):
            regions = sample["json"].get("regions") or []
            if not regions:
                continue
            width, height = sample["images"][0].size
            for region in regions:
                try:
                    x0, y0, x1, y1 = (float(value) for value in region["box"])
                    text = str(region["text"])
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"sample {sample.get('__key__')!r}: a region must be {{'box': [x0, y0, x1, y1], 'text': str}}, got {region!r}") from None
                covered = self._region_cells(region, (x0, y0, x1, y1), (width, height), sample.get("__key__"))
                if not covered.any():
                    continue
                parts = [cell for cell in covered.nonzero().flatten()] if self.region_per_patch else [None]
                for cell in parts:
                    owners.append(index)
                    cells.append(covered if cell is None else torch.nn.functional.one_hot(cell, grid * grid).bool())
                    phrases.append(text)
        if not owners:
            return {}
        distinct = sorted(set(phrases))
        length = min(self.config.text_max_length, max(len(t.encode()) for t in distinct))
        return {"region_sample": torch.tensor(owners), "region_cells": torch.stack(cells),
                "region_phrase_ids": _caption_ids(distinct, length),
                "region_phrase_index": torch.tensor([distinct.index(text) for text in phrases])}

    def _region_cells(self, region: dict, box: tuple[float, ...], image_wh: tuple[int, int], key: Any) -> torch.Tensor:
        """(grid * grid,) bool patches of one region: its ``cells`` when given, else those its box touches."""
        grid = self.image_size // 16
        if "cells" in region:
            flat = region["cells"]
            if not isinstance(flat, list) or not all(isinstance(c, int) and 0 <= c < grid * grid for c in flat):
                raise ValueError(f"sample {key!r}: region cells must be a list of ints in [0, {grid * grid}), got {flat!r}")
            covered = torch.zeros(grid * grid, dtype=torch.bool)
            covered[flat] = True
            return covered
        starts = torch.arange(grid) * 16
        (x0, y0, x1, y1), (width, height) = box, image_wh
        x0, x1 = x0 * self.image_size / width, x1 * self.image_size / width
        y0, y1 = y0 * self.image_size / height, y1 * self.image_size / height
        columns = (starts < x1) & (starts + 16 > x0)
        rows = (starts < y1) & (starts + 16 > y0)
        return (rows.unsqueeze(1) & columns.unsqueeze(0)).flatten()

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.tokenizers.image_tokenizer_training import siglip_stage_loss

        return siglip_stage_loss(model, batch, float(self.region_loss_weight))

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        count = int(batch["pixel_values"].shape[0])
        patches = count * (self.image_size // 16) ** 2
        return {"samples": count, "tokens": patches, "images": count}

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        folder = out_dir / "vision_tower"
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.visual.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        return folder
