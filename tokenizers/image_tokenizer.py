"""SigLIP-VQ semantic image tokenizer: images -> (h, w) grids of codebook ids, one per 16 x 16 pixels.

The architecture is transformers' ``GlmImageVisionModel`` (ViT with a resampled learned position
table; its output is one feature per 16 px patch) followed by ``GlmImageVQVAE`` (1x1 ``quant_conv``
to the code dimension, then the nearest of ``num_embeddings`` codes by cosine distance). The
official ``image_tokenizer/`` folder of LLaDA2.0-Uni loads into these classes strictly:

    image_tokenizer/
      config.json                   {"vision_config": {...}, "vq_config": {...}}
      preprocessor_config.json      Qwen2VLImageProcessor settings (patch/merge size, CLIP mean/std)
      image_tokenizer.safetensors   model.visual.* and model.vqmodel.* weights
      sigvq_embedding.pt            the decoder's token embedding (not read here)

unimask adds preprocessing (``image_preprocessing``), batching of mixed sizes and this API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import save_file

from unimask.checkpoint_files import load_safetensors, read_json_object
from torch import nn
from transformers import GlmImageVisionConfig, GlmImageVisionModel, GlmImageVQVAE, GlmImageVQVAEConfig

from unimask.tokenizers.image_preprocessing import (
    CLIP_MEAN,
    CLIP_STD,
    SIZE_POLICIES,
    TOKEN_PIXELS,
    ImageSizePolicy,
    PreprocessedImages,
    TargetSize,
    merge_order_to_grid,
    patchify,
    preprocess_images,
    resolve_size_policy,
)

CONFIG_NAME = "config.json"
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
WEIGHTS_NAME = "image_tokenizer.safetensors"
VISUAL_PREFIX = "model.visual."
VQMODEL_PREFIX = "model.vqmodel."

VISION_CONFIG_KEYS = (
    "depth",
    "hidden_size",
    "hidden_act",
    "attention_bias",
    "attention_dropout",
    "num_heads",
    "in_channels",
    "image_size",
    "patch_size",
    "spatial_merge_size",
    "intermediate_size",
    "initializer_range",
    "layer_norm_eps",
)
VQ_CONFIG_KEYS = ("embed_dim", "num_embeddings", "latent_channels", "in_channels", "initializer_range")


@dataclass
class ImagePreprocessorConfig:
    """The fields of ``preprocessor_config.json`` (transformers' ``Qwen2VLImageProcessor`` format) that
    matter here. The vision tower consumes one frame per patch, so ``temporal_patch_size`` only
    describes that processor's layout; ``merge_size`` sets its patch order and size factor."""

    patch_size: int = TOKEN_PIXELS
    temporal_patch_size: int = 1
    merge_size: int = 1
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_json_dict(cls, values: dict) -> "ImagePreprocessorConfig":
        """Read the fields from a parsed ``preprocessor_config.json`` (defaults for absent keys)."""
        config = cls(
            patch_size=int(values.get("patch_size", TOKEN_PIXELS)),
            temporal_patch_size=int(values.get("temporal_patch_size", 1)),
            merge_size=int(values.get("merge_size", 1)),
            image_mean=tuple(float(v) for v in values.get("image_mean", CLIP_MEAN)),
            image_std=tuple(float(v) for v in values.get("image_std", CLIP_STD)),
        )
        for name in ("patch_size", "temporal_patch_size", "merge_size"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        if len(config.image_mean) != 3 or len(config.image_std) != 3 or min(config.image_std) <= 0:
            raise ValueError(
                f"image_mean and image_std need 3 values each, std > 0; got {config.image_mean}, {config.image_std}"
            )
        return config

    def to_json_dict(self) -> dict:
        """A complete ``preprocessor_config.json`` that ``Qwen2VLImageProcessor.from_pretrained`` reads."""
        return {
            "image_processor_type": "Qwen2VLImageProcessor",
            "do_convert_rgb": True,
            "do_resize": True,
            "resample": 3,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "min_pixels": 128 * 128,
            "max_pixels": 800 * 800,
            "size": {"shortest_edge": 128 * 128, "longest_edge": 800 * 800},
            "patch_size": self.patch_size,
            "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size,
        }


@dataclass
class ImageTokens:
    """Output of ``SigLIPVQTokenizer.encode``.

    ids: (B, h, w) int64 when every image has the same grid, else a list of (h_i, w_i) int64.
    grids: the (h_i, w_i) token grid of each image (pixels / 16).
    features: the vision tower's continuous features, (B, h, w, hidden) or a list of
        (h_i, w_i, hidden), when requested; else None.
    """

    ids: torch.Tensor | list[torch.Tensor]
    grids: list[tuple[int, int]]
    features: torch.Tensor | list[torch.Tensor] | None = field(default=None)

    def ids_list(self) -> list[torch.Tensor]:
        """The ids as a list of (h_i, w_i) int64 tensors, whatever their storage."""
        return list(self.ids)


def vision_config_dict(config: GlmImageVisionConfig) -> dict:
    """The architecture fields of a vision config, as written to ``config.json``."""
    return {key: getattr(config, key) for key in VISION_CONFIG_KEYS}


def vq_config_dict(config: GlmImageVQVAEConfig) -> dict:
    """The architecture fields of a VQ config, as written to ``config.json``."""
    return {key: getattr(config, key) for key in VQ_CONFIG_KEYS}


def encode_vision_features(
    visual: GlmImageVisionModel, pixel_values: Sequence[torch.Tensor] | torch.Tensor
) -> list[torch.Tensor]:
    """Run the vision tower on several images of any sizes in one packed (variable-length) pass.

    pixel_values: a (B, 3, H, W) tensor or a list of (3, H_i, W_i) normalised tensors, sides
    multiples of the patch size. Returns a list of (h_i, w_i, hidden) features in raster order.
    Gradients flow when the caller enables them.
    """
    patch_size = visual.config.patch_size
    merge_size = visual.config.spatial_merge_size
    param = next(visual.parameters())
    patches, grids = [], []
    for image in pixel_values:
        patches.append(patchify(image, patch_size, merge_size))
        grids.append((image.shape[-2] // patch_size, image.shape[-1] // patch_size))
    grid_thw = torch.tensor([[1, h, w] for h, w in grids], dtype=torch.long, device=param.device)
    packed = torch.cat(patches).to(device=param.device, dtype=param.dtype)
    hidden = visual(packed, grid_thw=grid_thw).last_hidden_state
    per_image = torch.split(hidden, [h * w for h, w in grids])
    return [merge_order_to_grid(tokens, h, w, merge_size) for tokens, (h, w) in zip(per_image, grids)]


def quantize_features(vqmodel: GlmImageVQVAE, features: torch.Tensor) -> torch.Tensor:
    """Nearest codebook entry by cosine distance after ``quant_conv``.

    features: (B, h, w, latent_channels). Returns ids (B, h, w) int64.
    """
    batch, height, width, _ = features.shape
    latents = features.permute(0, 3, 1, 2).to(vqmodel.quant_conv.weight.dtype)
    ids = vqmodel.encode(latents).image_tokens
    return ids.view(batch, height, width)



class SigLIPVQTokenizer(nn.Module):
    """Images -> semantic token ids. Holds ``visual`` (GlmImageVisionModel) and ``vqmodel``
    (GlmImageVQVAE), the preprocessing settings and a default size policy (a name in
    ``SIZE_POLICIES``: "understanding" (the ~512 px crop list, default), "smart_single",
    "smart_multi", "shapes_world" (128 px -> 8 x 8), or an ``ImageSizePolicy``)."""

    def __init__(
        self,
        visual: GlmImageVisionModel,
        vqmodel: GlmImageVQVAE,
        preprocessor_config: ImagePreprocessorConfig | None = None,
        size_policy: str | ImageSizePolicy = "understanding",
    ):
        super().__init__()
        if visual.config.patch_size != TOKEN_PIXELS:
            raise ValueError(f"vision_config.patch_size must be {TOKEN_PIXELS}, got {visual.config.patch_size}")
        if visual.config.hidden_size != vqmodel.config.latent_channels:
            raise ValueError(
                f"vq_config.latent_channels ({vqmodel.config.latent_channels}) must equal "
                f"vision_config.hidden_size ({visual.config.hidden_size})"
            )
        self.visual = visual
        self.vqmodel = vqmodel
        self.preprocessor_config = preprocessor_config or ImagePreprocessorConfig()
        self.size_policy = resolve_size_policy(size_policy, SIZE_POLICIES["understanding"])
        self.eval()

    @property
    def codebook_size(self) -> int:
        """Number of codes (16384 in the official release)."""
        return self.vqmodel.config.num_embeddings

    @classmethod
    def from_config(
        cls,
        vision_config: dict | GlmImageVisionConfig,
        vq_config: dict | GlmImageVQVAEConfig,
        preprocessor_config: ImagePreprocessorConfig | None = None,
        size_policy: str | ImageSizePolicy = "understanding",
    ) -> "SigLIPVQTokenizer":
        """A randomly initialised tokenizer from config dicts (keys as in ``config.json``) or configs."""
        if isinstance(vision_config, dict):
            vision_config = GlmImageVisionConfig(**{k: v for k, v in vision_config.items() if k in VISION_CONFIG_KEYS})
        if isinstance(vq_config, dict):
            vq_config = GlmImageVQVAEConfig(**{k: v for k, v in vq_config.items() if k in VQ_CONFIG_KEYS})
        return cls(GlmImageVisionModel(vision_config), GlmImageVQVAE(vq_config), preprocessor_config, size_policy)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        size_policy: str | ImageSizePolicy = "understanding",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "SigLIPVQTokenizer":
        """Load an ``image_tokenizer/`` folder (or a checkpoint root containing one) strictly.

        Every weight in the file must be used and none may be missing; otherwise ValueError lists the
        keys. Weights are read with safetensors only.
        """
        folder = Path(path)
        if not (folder / CONFIG_NAME).is_file() and (folder / "image_tokenizer" / CONFIG_NAME).is_file():
            folder = folder / "image_tokenizer"
        if not (folder / CONFIG_NAME).is_file():
            raise ValueError(f"path {str(path)!r} has no {CONFIG_NAME} (nor image_tokenizer/{CONFIG_NAME})")
        raw = read_json_object(folder / CONFIG_NAME)
        if "vision_config" not in raw or "vq_config" not in raw:
            raise ValueError(f"{folder / CONFIG_NAME} must contain 'vision_config' and 'vq_config', has {sorted(raw)}")
        for name in ("vision_config", "vq_config"):
            if not isinstance(raw[name], dict):
                raise ValueError(f"{folder / CONFIG_NAME}: {name!r} must be an object, got {type(raw[name]).__name__}")
        preprocessor = ImagePreprocessorConfig()
        if (folder / PREPROCESSOR_CONFIG_NAME).is_file():
            preprocessor_json = read_json_object(folder / PREPROCESSOR_CONFIG_NAME)
            try:
                preprocessor = ImagePreprocessorConfig.from_json_dict(preprocessor_json)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{folder / PREPROCESSOR_CONFIG_NAME} is invalid: {error}") from error

        weight_files = [folder / WEIGHTS_NAME]
        if not weight_files[0].is_file():
            weight_files = sorted(folder.glob("*.safetensors"))
        if not weight_files:
            raise ValueError(f"no {WEIGHTS_NAME} (or other *.safetensors) in {folder}")
        state: dict[str, torch.Tensor] = {}
        for weight_file in weight_files:
            state.update(load_safetensors(weight_file))

        try:
            with torch.device("meta"):
                tokenizer = cls.from_config(raw["vision_config"], raw["vq_config"], preprocessor, size_policy)
        except (StrictDataclassError, TypeError, ValueError) as error:
            raise ValueError(f"{folder / CONFIG_NAME} holds an invalid vision_config or vq_config: {error}") from error
        tokenizer.load_official_state_dict(state)
        return tokenizer.to(device=device, dtype=dtype).eval()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the official names (``model.visual.*``, ``model.vqmodel.*``)."""
        state = {VISUAL_PREFIX + k: v for k, v in self.visual.state_dict().items()}
        state.update({VQMODEL_PREFIX + k: v for k, v in self.vqmodel.state_dict().items()})
        return state

    def load_official_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load official-named weights strictly: ValueError on any missing or unexpected key or on a
        shape mismatch. Tensors are assigned (works on a meta-device model)."""
        expected = {name: tensor.shape for name, tensor in self.official_state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"image tokenizer weights do not match the architecture: missing {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''} ({len(missing)}), unexpected {unexpected[:10]}"
                f"{' ...' if len(unexpected) > 10 else ''} ({len(unexpected)})"
            )
        wrong_shapes = [
            f"{name}: file {tuple(state[name].shape)} vs model {tuple(shape)}"
            for name, shape in expected.items()
            if tuple(state[name].shape) != tuple(shape)
        ]
        if wrong_shapes:
            raise ValueError(f"image tokenizer weight shapes do not match the config: {wrong_shapes[:10]}")
        for prefix, module in ((VISUAL_PREFIX, self.visual), (VQMODEL_PREFIX, self.vqmodel)):
            module_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(module_state, strict=True, assign=True)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json``, ``preprocessor_config.json`` and ``image_tokenizer.safetensors`` in the
        official layout to folder ``path`` (created). Returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "vision_config": vision_config_dict(self.visual.config),
            "vq_config": vq_config_dict(self.vqmodel.config),
        }
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        preprocessor_json = json.dumps(self.preprocessor_config.to_json_dict(), indent=2)
        (folder / PREPROCESSOR_CONFIG_NAME).write_text(preprocessor_json + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.official_state_dict().items()}
        save_file(state, str(folder / WEIGHTS_NAME))
        return folder

    def preprocess(self, images, target_size: TargetSize | ImageSizePolicy = None) -> PreprocessedImages:
        """Size, crop and normalise images (see ``image_preprocessing``).

        images: a PIL image (any mode), numpy array (HWC/CHW/HW; uint8, integer, bool or float in
        [0, 1]), tensor (CHW/HWC/HW), a list of those, or a 4-D batch. target_size: None (this
        tokenizer's size policy), "auto" (the ~512 px aspect-ratio crop list), a policy name, or
        (height, width) pixels, multiples of 16. Raises ValueError for sizes outside the limits.
        """
        policy = resolve_size_policy(target_size, self.size_policy)
        return preprocess_images(
            images, policy, self.preprocessor_config.image_mean, self.preprocessor_config.image_std
        )

    def encode_pixel_values(
        self, pixel_values: Sequence[torch.Tensor] | torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Token ids and features of already normalised pixels.

        pixel_values: (B, 3, H, W) or a list of (3, H_i, W_i). Returns (ids, features): lists of
        (h_i, w_i) int64 and (h_i, w_i, hidden) tensors. Runs under the caller's grad mode.
        """
        features = encode_vision_features(self.visual, pixel_values)
        ids: list[torch.Tensor | None] = [None] * len(features)
        by_grid: dict[tuple[int, int], list[int]] = {}
        for index, grid in enumerate(features):
            by_grid.setdefault(tuple(grid.shape[:2]), []).append(index)
        for indices in by_grid.values():
            grid_ids = quantize_features(self.vqmodel, torch.stack([features[i] for i in indices]))
            for position, index in enumerate(indices):
                ids[index] = grid_ids[position]
        return ids, features

    @torch.no_grad()
    def encode(
        self,
        images,
        target_size: TargetSize | ImageSizePolicy = None,
        return_features: bool = False,
        batch_size: int = 16,
    ) -> ImageTokens:
        """Tokenise images (same inputs as ``preprocess``; a single image is a batch of one).

        Images are encoded ``batch_size`` at a time in one packed pass each. Returns ``ImageTokens``:
        ids (B, h, w) int64 when all grids match, else a list of (h_i, w_i); grids; and the vision
        features when ``return_features``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        processed = self.preprocess(images, target_size)
        all_ids: list[torch.Tensor] = []
        all_features: list[torch.Tensor] = []
        for start in range(0, len(processed.pixel_values), batch_size):
            ids, features = self.encode_pixel_values(processed.pixel_values[start : start + batch_size])
            all_ids.extend(ids)
            if return_features:
                all_features.extend(features)
        same_grid = len(set(processed.grids)) == 1
        ids_out = torch.stack(all_ids).cpu() if same_grid else [i.cpu() for i in all_ids]
        features_out = None
        if return_features:
            features_out = torch.stack(all_features).cpu() if same_grid else [f.cpu() for f in all_features]
        return ImageTokens(ids=ids_out, grids=list(processed.grids), features=features_out)
