"""The ``decoder_flow`` stage: flow-matching training of the decoder transformer.

Samples: an image and its token grid (``codes.npy``; the first image and first grid are used).
The image is resized to ``grid x 16 x resolution_multiplier`` pixels and scaled to [-1, 1].
SigVQ and the VAE stay frozen; the transformer trains (with the SigVQ grid position embeddings, where the preset has them).

``model``: ``{"preset": "<configs/models/decoder/NAME.yaml>"}``.
``stage_options``: ``condition_dropout`` (default 0.1), ``resolution_multiplier`` (default: the
preset's), ``variant`` ("normal" | "turbo", the scheduler written with the export), ``init_vae``
(a trained VAE folder, e.g. the ``vae`` stage's ``export/vae``; default: the preset's random VAE),
``init`` (a decoder folder with ``transformer/`` and ``sigvq/``, e.g. an earlier export's ``decoder``,
to continue from; default: random weights), ``time_shift`` (the shift of the training data times,
default the reference's 6: most samples at high noise, as the normal sampler's shifted grid visits
them; 1 samples data times uniformly, as the turbo sampler's unshifted grid does). A preset with
draft patches (``sigvq.draft_channels``) may continue a decoder without them: the new input channels
start at zero weight, so training starts from exactly the earlier decoder's predictions. A preset
with a draft network (``sigvq.draft_layers``) trains it by regression to the clean latents beside
the flow loss, weighted ``draft_loss_weight`` (default 1.0); ``draft_only: true`` trains that network
alone (the transformer is neither run nor changed), which is far cheaper a step. ``draft_objective``
(with ``draft_only``) picks that network's loss: ``"latent_mse"`` (default, ``draft_loss``) or
``"pixel_l1"`` (``draft_pixel_loss``: L1 in pixels through the frozen VAE decoder, which weighs the
draft's errors where the decoded image shows them); with it, ``foreground_weight`` (default 1.0, in [1, 100])
weighs the pixels that differ from the image's top-left (background) colour, so uncertain outlines keep
their corners.
Export: the trained transformer with ``save_pretrained`` in ``decoder/transformer`` plus the
frozen ``sigvq``/``vae`` next to it (diffusers folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unimask.config import ConfigError
from unimask.decoders.flow_schedule import REFERENCE_TIME_SHIFT
from unimask.training.stages import Stage

__all__ = ["DecoderParts", "DecoderFlowStage", "decoder_pixel_batch", "DRAFT_OBJECTIVES"]

# The draft network's losses under ``draft_only``: latent regression, or L1 in pixels through the VAE decoder.
DRAFT_OBJECTIVES = ("latent_mse", "pixel_l1")


class DecoderParts(nn.Module):
    """The decoder's ``sigvq``, ``transformer`` and ``vae`` as one module (what the losses take).

    Only the components named in ``trainable`` get gradients.
    """

    def __init__(self, sigvq: nn.Module, transformer: nn.Module, vae: nn.Module, trainable: tuple[str, ...]):
        super().__init__()
        self.sigvq, self.transformer, self.vae = sigvq, transformer, vae
        for name in ("sigvq", "transformer", "vae"):
            getattr(self, name).requires_grad_(name in trainable)
        if "transformer" in trainable and hasattr(sigvq, "trained_with_transformer"):
            # grid positions and draft patches (small presets only) are learned with the transformer that reads them
            for parameter in sigvq.trained_with_transformer():
                parameter.requires_grad_(True)


def decoder_pixel_batch(samples: list[dict[str, Any]], multiplier: int, need_codes: bool = True) -> dict[str, torch.Tensor]:
    """``pixel_values`` (B, 3, H, W) in [-1, 1] and ``token_grids`` (B, h, w) int64 from samples.

    Raises:
        ValueError: a sample without image or (when needed) without codes, or mixed grid sizes.
    """
    pixels, grids = [], []
    for sample in samples:
        key = sample.get("__key__")
        if not sample["images"]:
            raise ValueError(f"sample {key!r} has no image")
        if need_codes and sample.get("codes") is None:
            raise ValueError(f"sample {key!r} has no codes.npy (run `unimask data tokenize` first)")
        if need_codes:
            grid = np.asarray(sample["codes"][0], dtype=np.int64)
            height, width = grid.shape[0] * 16 * multiplier, grid.shape[1] * 16 * multiplier
            grids.append(torch.from_numpy(grid))
        else:
            width, height = sample["images"][0].size
        image = sample["images"][0].convert("RGB").resize((width, height))
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1))
    if len({p.shape for p in pixels}) != 1:
        raise ValueError(f"samples of one batch must share an image size, got {sorted({tuple(p.shape) for p in pixels})}")
    batch = {"pixel_values": torch.stack(pixels)}
    if need_codes:
        batch["token_grids"] = torch.stack(grids)
    return batch


def _load_init_part(module: nn.Module, folder: Path, part: str) -> None:
    """Load an earlier decoder's ``part`` strictly, except for the draft: the transformer's draft input
    channels start at zero when the earlier one had none (``widen_state_for_draft``), the SigVQ's draft
    weights (``draft_latent_patches``, ``draft_network.*``) keep their fresh values when the earlier
    decoder had none, and per-code draft patches are dropped when the preset writes its draft with a
    draft network instead."""
    from unimask.checkpoint_files import load_folder_weights, load_state_dict_strict
    from unimask.decoders.draft_widening import widen_state_for_draft

    state = load_folder_weights(folder)
    expected = module.state_dict()
    if part == "transformer":
        state = widen_state_for_draft(state, expected)
    else:
        for name in expected:
            if name.startswith("draft_") and name not in state:
                state[name] = expected[name].clone()
        state = {name: tensor for name, tensor in state.items() if name in expected or not name.startswith("draft_")}
    load_state_dict_strict(module, state)


class DecoderFlowStage(Stage):
    """Velocity-matching loss (``unimask.decoders.training_losses.flow_matching_loss``)."""

    name = "decoder_flow"
    trainable: tuple[str, ...] = ("transformer",)
    option_defaults: dict[str, Any] = {"condition_dropout": 0.1, "resolution_multiplier": None, "variant": "normal", "init_vae": None,
                                       "init": None, "time_shift": REFERENCE_TIME_SHIFT, "draft_loss_weight": 1.0,
                                       "draft_only": False, "draft_objective": "latent_mse", "foreground_weight": 1.0}

    def check_config(self) -> None:
        from unimask.decoders.decoder_presets import load_decoder_preset

        model = dict(self.recipe.model)
        preset = model.pop("preset", "tiny")
        if model:
            raise ConfigError(f"model: unknown key(s) {sorted(model)} for stage {self.name!r}; allowed: ['preset']")
        try:
            self.preset = load_decoder_preset(preset)
        except ValueError as err:
            raise ConfigError(f"model.preset: unknown model preset {preset!r}: {err}") from None
        options = dict(self.recipe.stage_options)
        unknown = sorted(set(options) - set(self.option_defaults))
        if unknown:
            raise ConfigError(f"stage_options: unknown key(s) {unknown} for stage {self.name!r}; allowed: {sorted(self.option_defaults)}")
        self.options = {**self.option_defaults, **options}
        self.multiplier = int(self.options["resolution_multiplier"] or self.preset.get("resolution_multiplier", 1))
        shift = self.options.get("time_shift", REFERENCE_TIME_SHIFT)  # decoder_distill has no such option
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift <= 100:
            raise ConfigError(f"stage_options.time_shift must be a number in (0, 100], got {shift!r}")
        weight = self.options.get("draft_loss_weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 100:
            raise ConfigError(f"stage_options.draft_loss_weight must be a number in [0, 100], got {weight!r}")
        draft_only = self.options.get("draft_only", False)
        if not isinstance(draft_only, bool):
            raise ConfigError(f"stage_options.draft_only must be true or false, got {draft_only!r}")
        if draft_only and not self.preset.get("sigvq", {}).get("draft_layers"):
            raise ConfigError("stage_options.draft_only needs a preset whose sigvq has a draft network (draft_layers > 0)")
        objective = self.options.get("draft_objective", "latent_mse")
        if objective not in DRAFT_OBJECTIVES:
            raise ConfigError(f"stage_options.draft_objective must be one of {list(DRAFT_OBJECTIVES)}, got {objective!r}")
        if objective != "latent_mse" and not draft_only:
            raise ConfigError(f"stage_options.draft_objective={objective!r} needs draft_only: true (the flow loss "
                              "trains the draft network by latent regression)")
        foreground = self.options.get("foreground_weight", 1.0)
        if isinstance(foreground, bool) or not isinstance(foreground, (int, float)) or not 1 <= foreground <= 100:
            raise ConfigError(f"stage_options.foreground_weight must be a number in [1, 100], got {foreground!r}")
        if foreground != 1 and objective != "pixel_l1":
            raise ConfigError(f"stage_options.foreground_weight={foreground!r} weighs the pixel loss: it needs "
                              "draft_objective: pixel_l1")
        init_vae = self.options.get("init_vae")
        if init_vae is not None and not (Path(init_vae) / "config.json").is_file():
            raise ConfigError(f"stage_options.init_vae={init_vae!r} is not a saved VAE folder (no config.json)")
        init = self.options.get("init")
        if init is not None and not all((Path(init) / part / "config.json").is_file() for part in ("transformer", "sigvq")):
            raise ConfigError(f"stage_options.init={init!r} is not a saved decoder folder (needs transformer/ and sigvq/)")

    def _build_decoder(self, variant: str):
        from unimask.decoders.decoder_presets import build_decoder

        return build_decoder(self.preset, variant=variant, seed=self.recipe.seed)

    def build_model(self) -> nn.Module:
        decoder = self._build_decoder(self.options["variant"])
        vae = decoder.vae
        if self.options.get("init_vae") is not None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(self.options["init_vae"])
        if self.options.get("init") is not None:
            for part in ("transformer", "sigvq"):
                try:
                    _load_init_part(getattr(decoder, part), Path(self.options["init"]) / part, part)
                except ValueError as err:
                    raise ConfigError(f"stage_options.init={self.options['init']!r}: {part} does not fit model.preset: {err}") from None
        if self.options.get("draft_only"):
            parts = DecoderParts(decoder.sigvq, decoder.transformer, vae, trainable=())
            for parameter in decoder.sigvq.draft_parameters():
                parameter.requires_grad_(True)
            return parts
        return DecoderParts(decoder.sigvq, decoder.transformer, vae, self.trainable)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(getattr(model.transformer, "layers", []))

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return decoder_pixel_batch(samples, self.multiplier)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.decoders.training_losses import draft_loss, draft_pixel_loss, flow_matching_loss

        if self.options.get("draft_only"):
            if self.options.get("draft_objective", "latent_mse") == "pixel_l1":
                return draft_pixel_loss(model, batch, float(self.options.get("foreground_weight", 1.0)))
            return draft_loss(model, batch)
        return flow_matching_loss(model, batch, condition_dropout=self.options["condition_dropout"],
                                  time_shift=float(self.options["time_shift"]),
                                  draft_loss_weight=float(self.options.get("draft_loss_weight", 1.0)))

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        count = int(batch["pixel_values"].shape[0])
        return {"samples": count, "tokens": 0, "images": count}

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        folder = out_dir / "decoder"
        for name in ("sigvq", "transformer", "vae"):
            getattr(model, name).save_pretrained(folder / name, safe_serialization=True)
        return folder
