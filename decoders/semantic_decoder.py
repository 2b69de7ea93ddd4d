"""`SemanticImageDecoder`: semantic image token grids -> pixels (LLaDA2.0-Uni's image decoder).

SigVQ features of the 2x-upsampled token grid condition a Z-Image transformer that denoises VAE
latents by flow matching; the VAE decodes them. Two variants share the code: "normal" (50-point
Euler ODE with norm-clipped guidance) and "turbo" (distilled, 8 re-noising steps, no guidance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from unimask.checkpoint_files import read_json_object
from unimask.decoders.flow_schedule import (
    NORMAL_STEPS,
    TURBO_STEPS,
    make_decoder_scheduler,
    reference_sigmas,
    run_flow_sampler,
    sampler_steps_from,
)
from unimask.decoders.official_checkpoint import load_official_transformer, load_transformer, load_vae
from unimask.decoders.sigvq import GRID_UPSAMPLE, SigVQEmbedding, load_sigvq_state_dict, sigvq_from_state_dict
from unimask.decoders.vae_latents import decode_latents, vae_downsampling_factor
from unimask.decoders.velocity import predict_velocity, reads_cell_features

TOKEN_PIXELS = 16  # one semantic token per 16 x 16 input pixels
VARIANT_DEFAULTS = {"normal": (NORMAL_STEPS, 1.0), "turbo": (TURBO_STEPS, 0.0)}
PREVIEW_STEPS = {"normal": 3, "turbo": 2}
OUTPUT_TYPES = ("pil", "np", "pt")
MAX_RESOLUTION_MULTIPLIER = 8
# Largest decoded side in pixels: bounds the latent and VAE memory of one call (official outputs are
# at most about 2048 px).
MAX_OUTPUT_SIDE = 8192


@dataclass
class DecoderOutput(BaseOutput):
    """images: list of PIL images ("pil"); (batch, H, W, 3) float array ("np") or
    (batch, 3, H, W) float tensor ("pt") in [0, 1] when all grids share a size, else a list of
    per-image arrays/tensors, in the order of the input grids."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | list


def prepare_token_grids(
    token_grids, grid_sizes: Sequence[tuple[int, int]] | None, vocab_size: int
) -> list[torch.Tensor]:
    """Validate caller token grids and return them as a list of (h, w) int64 CPU tensors.

    token_grids: (batch, h, w) or (h, w) integer tensor/array, or a list of (h, w) grids; with
    `grid_sizes` (one (h, w) per grid) each entry may be a flat sequence of h * w ids.
    Raises `ValueError` for empty input, non-integer ids, ids outside [0, vocab_size), sizes
    <= 0, or a flat id count that does not equal h * w.
    """
    if isinstance(token_grids, (torch.Tensor, np.ndarray)):
        grids = torch.as_tensor(token_grids)
        if grid_sizes is not None:
            items = list(grids.unbind(0)) if grids.dim() >= 2 else [grids]
        elif grids.dim() == 2:
            items = [grids]
        elif grids.dim() == 3:
            items = list(grids.unbind(0))
        else:
            raise ValueError(f"token_grids must be (batch, h, w) or (h, w), got shape {tuple(grids.shape)}")
    elif isinstance(token_grids, (list, tuple)):
        items = [item if isinstance(item, torch.Tensor) else torch.as_tensor(np.asarray(item)) for item in token_grids]
    else:
        raise ValueError(f"token_grids must be a tensor, array or list, got {type(token_grids).__name__}")
    if not items:
        raise ValueError("token_grids is empty")
    if grid_sizes is not None:
        if len(grid_sizes) != len(items):
            raise ValueError(f"grid_sizes has {len(grid_sizes)} entries for {len(items)} token grids")
        reshaped = []
        for index, (item, size) in enumerate(zip(items, grid_sizes)):
            height, width = (int(v) for v in size)
            if height <= 0 or width <= 0:
                raise ValueError(f"grid_sizes[{index}] = {tuple(size)}: sizes must be > 0")
            if item.numel() != height * width:
                raise ValueError(
                    f"token grid {index} has {item.numel()} ids but grid_sizes[{index}] = "
                    f"({height}, {width}) needs h * w = {height * width}"
                )
            reshaped.append(item.reshape(height, width))
        items = reshaped
    grids = []
    for index, item in enumerate(items):
        if item.dim() != 2:
            raise ValueError(f"token grid {index} must be 2-D (h, w), got shape {tuple(item.shape)}")
        if item.shape[0] <= 0 or item.shape[1] <= 0:
            raise ValueError(f"token grid {index} has size {tuple(item.shape)}: h and w must be > 0")
        if item.dtype.is_floating_point or item.dtype.is_complex or item.dtype == torch.bool:
            raise ValueError(f"token grid {index} must hold integer ids, got dtype {item.dtype}")
        low, high = int(item.min()), int(item.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"token grid {index} has ids in [{low}, {high}]; allowed range is [0, {vocab_size})"
            )
        grids.append(item.to(device="cpu", dtype=torch.long))
    return grids


class SemanticImageDecoder(DiffusionPipeline):
    """Decodes grids of semantic image tokens to images.

    Components: `sigvq` (`SigVQEmbedding`), `transformer` (diffusers `ZImageTransformer2DModel`),
    `vae` (`AutoencoderKL`), `scheduler` (`FlowMatchEulerDiscreteScheduler`, see
    `unimask.decoders.flow_schedule`). Models stay loaded between calls; `offload()` moves them to
    the CPU, `enable_model_cpu_offload()` (diffusers) moves each to the accelerator only while used.

    `draft_strength` (default for calls, saved in `model_index.json`): 1.0 samples from pure noise (the
    reference); below 1, with a SigVQ draft network, sampling starts from the network's draft noised to
    data time 1 - strength and runs only the schedule's steps from there (as diffusers' img2img
    `strength`); 0 decodes the draft itself without the transformer.
    """

    model_cpu_offload_seq = "sigvq->transformer->vae"

    def __init__(
        self,
        sigvq: SigVQEmbedding,
        transformer: ZImageTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: FlowMatchEulerDiscreteScheduler,
        decoder_variant: str = "turbo",
        draft_strength: float = 1.0,
    ):
        super().__init__()
        if decoder_variant not in VARIANT_DEFAULTS:
            raise ValueError(f"decoder_variant must be 'normal' or 'turbo', got {decoder_variant!r}")
        self.register_modules(sigvq=sigvq, transformer=transformer, vae=vae, scheduler=scheduler)
        self._check_draft_strength(draft_strength)
        self.register_to_config(decoder_variant=decoder_variant, draft_strength=float(draft_strength))

    def _check_draft_strength(self, draft_strength) -> None:
        if isinstance(draft_strength, bool) or not isinstance(draft_strength, (int, float)) or not 0.0 <= draft_strength <= 1.0:
            raise ValueError(f"draft_strength must be a number in [0, 1], got {draft_strength!r}")
        if draft_strength < 1.0 and not getattr(self.sigvq, "has_draft_network", False):
            raise ValueError(f"draft_strength {draft_strength} < 1 starts from the SigVQ's draft network, which this "
                             "decoder does not have; use 1.0 (sample from noise)")

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(
        cls,
        root: str | Path,
        variant: str | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> "SemanticImageDecoder":
        """Load a decoder strictly from the official checkpoint root (`decoder/` or
        `decoder-turbo/`, `vae/`, `image_tokenizer/sigvq_embedding.pt`) or from a folder written by
        `save_pretrained` (has `model_index.json`).

        variant: "turbo" or "normal"; None means "turbo" for the official root and the saved
        variant for our layout (asking for the other one there raises `ValueError`).
        """
        root = Path(root)
        if variant not in (None, "turbo", "normal"):
            raise ValueError(f"variant must be 'turbo', 'normal' or None, got {variant!r}")
        if (root / "model_index.json").is_file():
            index = read_json_object(root / "model_index.json")
            saved_variant, draft_strength = index.get("decoder_variant", "turbo"), index.get("draft_strength", 1.0)
            if variant is not None and variant != saved_variant:
                raise ValueError(f"{root} holds the {saved_variant!r} decoder, not {variant!r}")
            sigvq_path = root / "sigvq" / "diffusion_pytorch_model.safetensors"
            sigvq_config = root / "sigvq" / "config.json"
            sigvq = sigvq_from_state_dict(load_sigvq_state_dict(sigvq_path),
                                          read_json_object(sigvq_config) if sigvq_config.is_file() else None)
            transformer = load_transformer(root / "transformer", torch_dtype)
            scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(root / "scheduler")
            variant = saved_variant
        elif (root / "vae").is_dir() and (root / "image_tokenizer").is_dir():
            variant = variant or "turbo"
            sigvq_path = root / "image_tokenizer" / "sigvq_embedding.pt"
            if not sigvq_path.is_file():
                sigvq_path = sigvq_path.with_suffix(".safetensors")
            if not sigvq_path.is_file():
                raise FileNotFoundError(f"missing {root / 'image_tokenizer' / 'sigvq_embedding.pt'} (or .safetensors)")
            sigvq = sigvq_from_state_dict(load_sigvq_state_dict(sigvq_path))
            folder = root / ("decoder-turbo" if variant == "turbo" else "decoder")
            transformer = load_official_transformer(folder, sigvq.config.inner_dim, torch_dtype)
            scheduler = make_decoder_scheduler(variant)
            draft_strength = 1.0
        else:
            raise ValueError(f"{root} is neither an official checkpoint root nor a saved SemanticImageDecoder")
        vae = load_vae(root / "vae", torch_dtype)
        if torch_dtype is not None:
            sigvq = sigvq.to(torch_dtype)
        return cls(sigvq=sigvq, transformer=transformer, vae=vae, scheduler=scheduler, decoder_variant=variant,
                   draft_strength=draft_strength)

    def offload(self) -> "SemanticImageDecoder":
        """Move every model to the CPU (to free accelerator memory while idle); returns self."""
        return self.to("cpu")

    # ---------------------------------------------------------------- steps of __call__
    @property
    def defaults(self) -> tuple[int, float]:
        """(num_inference_steps, guidance_scale) of this decoder's variant."""
        return VARIANT_DEFAULTS[self.config.decoder_variant]

    def transformer_steps(self, num_inference_steps: int, draft_strength: float | None = None) -> int:
        """How many sampler steps evaluate the transformer (each once, twice with guidance) for a call
        with these arguments: the schedule's points at data times >= 1 - draft_strength (n - 1 of an
        n-point ODE grid, n of the re-noising one, fewer when starting from the draft)."""
        strength = self.config.draft_strength if draft_strength is None else draft_strength
        return sampler_steps_from(self.scheduler, num_inference_steps, 1.0 - strength)

    @property
    def max_grid_side(self) -> int | None:
        """The largest token-grid side this decoder can decode (its SigVQ grid position embeddings'
        reach), or None when any size works (the official decoder)."""
        size = self.sigvq.config.grid_position_size
        return size // GRID_UPSAMPLE if size else None

    def output_size(self, height: int, width: int, resolution_multiplier: int) -> tuple[int, int]:
        """Pixel size (H, W) of the image decoded from an (h, w) grid at this multiplier."""
        return height * TOKEN_PIXELS * resolution_multiplier, width * TOKEN_PIXELS * resolution_multiplier

    def check_inputs(
        self, num_inference_steps: int, guidance_scale: float, resolution_multiplier: int, output_type: str
    ) -> None:
        """Raise `ValueError` for arguments outside their allowed ranges."""
        stochastic = self.scheduler.config.stochastic_sampling
        reference_sigmas(num_inference_steps, stochastic)  # validates the step count
        if (
            not isinstance(guidance_scale, (int, float))
            or isinstance(guidance_scale, bool)
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
        if (
            not isinstance(resolution_multiplier, int)
            or isinstance(resolution_multiplier, bool)
            or not 1 <= resolution_multiplier <= MAX_RESOLUTION_MULTIPLIER
        ):
            raise ValueError(
                f"resolution_multiplier must be an int in [1, {MAX_RESOLUTION_MULTIPLIER}], got {resolution_multiplier!r}"
            )
        latent_per_token = TOKEN_PIXELS * resolution_multiplier / vae_downsampling_factor(self.vae)
        patch = self.transformer.config.all_patch_size[0]
        if latent_per_token != int(latent_per_token) or int(latent_per_token) % patch:
            raise ValueError(
                f"resolution_multiplier {resolution_multiplier} gives {latent_per_token} latent pixels per "
                f"token; it must be a multiple of the patch size {patch}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")

    def prepare_latents(
        self, batch: int, height: int, width: int, resolution_multiplier: int, generator, device: torch.device
    ) -> torch.Tensor:
        """Initial noise (batch, C, 1, H / f, W / f) float32 for (h, w) grids; f is the VAE factor
        (official: (16, 1, 2 * H / 16, 2 * W / 16))."""
        out_h, out_w = self.output_size(height, width, resolution_multiplier)
        factor = vae_downsampling_factor(self.vae)
        channels = self.transformer.config.in_channels - self.sigvq.config.draft_channels
        shape = (batch, channels, 1, out_h // factor, out_w // factor)
        return randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    def _decode_group(self, grids, steps, guidance_scale, generator, resolution_multiplier, callback, draft_strength):
        device = self._execution_device
        batch, height, width = grids.shape
        latents = self.prepare_latents(batch, height, width, resolution_multiplier, generator, device)
        condition = self.sigvq.condition(
            grids.to(device), cells=reads_cell_features(self.transformer), latent_size=tuple(latents.shape[-2:])
        )
        start = 1.0 - draft_strength
        if start > 0:
            latents = start * condition.draft.to(latents.dtype) + (1.0 - start) * latents

        def velocity_fn(noisy: torch.Tensor, data_time: torch.Tensor) -> torch.Tensor:
            return predict_velocity(self.transformer, noisy, data_time, condition, guidance_scale)

        latents = run_flow_sampler(self.scheduler, velocity_fn, latents, steps, generator, callback, start_data_time=start)
        return decode_latents(self.vae, latents)

    @torch.no_grad()
    def __call__(
        self,
        token_grids,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        resolution_multiplier: int = 2,
        output_type: str = "pil",
        callback: Callable[[int, float, torch.Tensor], None] | None = None,
        grid_sizes: Sequence[tuple[int, int]] | None = None,
        draft_strength: float | None = None,
    ) -> DecoderOutput:
        """Decode token grids to images of size (h * 16 * m, w * 16 * m), m = resolution_multiplier.

        token_grids: (batch, h, w) int64, or a list of (h, w) grids (sizes may differ: grids are
        decoded in groups of equal size), or flat id lists with `grid_sizes`.
        num_inference_steps / guidance_scale: None -> the variant's defaults (normal 50 / 1.0,
        turbo 8 / 0.0); guidance follows the reference convention (see `predict_velocity`).
        generator: one generator, or one per grid (then a batch decodes exactly like one grid at a
        time with the same generators). callback(step, data_time, latents) runs after each step
        (steps restart at 0 for each group of equal-size grids).
        draft_strength: None -> this decoder's default (see the class); below 1 only the schedule's steps
        from data time 1 - draft_strength run, starting from the draft.
        Limits (`ValueError` past them): num_inference_steps <= 1000, resolution_multiplier in [1, 8],
        each decoded side <= 8192 px, guidance_scale finite and >= 0.
        """
        default_steps, default_guidance = self.defaults
        steps = default_steps if num_inference_steps is None else num_inference_steps
        guidance = default_guidance if guidance_scale is None else guidance_scale
        self.check_inputs(steps, guidance, resolution_multiplier, output_type)
        draft_strength = self.config.draft_strength if draft_strength is None else draft_strength
        self._check_draft_strength(draft_strength)
        grids = prepare_token_grids(token_grids, grid_sizes, self.sigvq.config.vocab_size)
        for index, grid in enumerate(grids):
            out_h, out_w = self.output_size(grid.shape[0], grid.shape[1], resolution_multiplier)
            if max(out_h, out_w) > MAX_OUTPUT_SIDE:
                raise ValueError(
                    f"token grid {index} of {tuple(grid.shape)} at resolution_multiplier {resolution_multiplier} "
                    f"decodes to {out_h} x {out_w} pixels; each side must be <= {MAX_OUTPUT_SIDE}"
                )
        if isinstance(generator, list) and len(generator) != len(grids):
            raise ValueError(f"generator list has {len(generator)} entries for {len(grids)} token grids")

        groups: dict[tuple[int, int], list[int]] = {}
        for index, grid in enumerate(grids):
            groups.setdefault(tuple(grid.shape), []).append(index)
        images: list[torch.Tensor | None] = [None] * len(grids)
        for indices in groups.values():
            group_generator = [generator[i] for i in indices] if isinstance(generator, list) else generator
            stacked = torch.stack([grids[i] for i in indices])
            decoded = self._decode_group(stacked, steps, guidance, group_generator, resolution_multiplier, callback,
                                         float(draft_strength))
            for position, index in enumerate(indices):
                images[index] = decoded[position].cpu()
        self.maybe_free_model_hooks()
        return DecoderOutput(images=self.format_images(images, output_type))

    @staticmethod
    def format_images(images: list[torch.Tensor], output_type: str):
        """(3, H, W) tensors in [0, 1] -> ``output_type``: "pt" (B, 3, H, W) tensor, "np" (B, H, W, 3) array (a
        list of either when sizes differ) or "pil" images."""
        same_size = len({tuple(image.shape) for image in images}) == 1
        if output_type == "pt":
            return torch.stack(images) if same_size else images
        arrays = [image.permute(1, 2, 0).numpy() for image in images]
        if output_type == "np":
            return np.stack(arrays) if same_size else arrays
        return [PIL.Image.fromarray((array * 255).round().astype(np.uint8)) for array in arrays]

    def preview(
        self,
        token_grids,
        num_inference_steps: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        grid_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> DecoderOutput:
        """Cheap low-resolution decode for step previews: resolution multiplier 1, no guidance and
        2 (turbo) or 3 (normal: 2 Euler steps) schedule points unless `num_inference_steps` is given."""
        steps = num_inference_steps or PREVIEW_STEPS[self.config.decoder_variant]
        return self(
            token_grids,
            num_inference_steps=steps,
            guidance_scale=0.0,
            generator=generator,
            resolution_multiplier=1,
            output_type=output_type,
            grid_sizes=grid_sizes,
        )
