"""Training pieces for the SigLIP-VQ image tokenizer, free of trainer logic.

Stage 1 (semantic encoder): sigmoid contrastive (SigLIP) training of the vision tower
(``GlmImageVisionModel``) against a small text tower on image-caption pairs, with open_clip's
``SigLipLoss``. Instead of training from scratch, a SigLIP2 vision checkpoint can be mapped onto the
tower with ``unimask.tokenizers.siglip2_conversion`` (no download here; pass a state dict you have).

Stage 2 (quantizer): the frozen tower's features go through ``quant_conv`` and are snapped to the
nearest code by cosine distance (the official ``GlmImageVQVAE``). Trained with a commitment loss, a
feature-reconstruction loss through ``post_quant_conv`` (keeps the projection from collapsing onto
few codes), an EMA or learnable codebook, and dead-code restarts.

Batch dict keys:
    pixel_values: (B, 3, H, W) float, CLIP-normalised, H and W multiples of 16 (all images one size)
    text_ids:     (B, T) int64 token ids (stage 1 only)
    text_mask:    (B, T) bool or {0, 1}, True/1 at real tokens (stage 1 only; optional, default all)

Each ``*_stage_loss(model, batch) -> (loss, metrics)`` returns a scalar loss and a dict of float
metrics. The VQ stage updates its EMA statistics (and, in "ema" mode, the codebook) and restarts
dead codes inside ``forward`` while the module is in training mode, as EMA quantizers do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss
from torch import nn
from transformers import GlmImageVisionConfig, GlmImageVisionModel, GlmImageVQVAE, GlmImageVQVAEConfig

from unimask.tokenizers.image_tokenizer import ImagePreprocessorConfig, SigLIPVQTokenizer, encode_vision_features


@dataclass
class ImageTokenizerTrainingConfig:
    """Sizes and hyper-parameters of both stages (defaults: a tiny CPU-sized model).

    Vision tower: ``vision_*``; text tower: ``text_*``; SigLIP head width ``projection_dim``;
    quantizer: ``codebook_size`` codes of ``code_dim``; ``commitment_beta`` weights the commitment
    loss; ``codebook_update`` is "ema" or "learnable"; ``ema_decay`` for EMA statistics; a code whose
    EMA usage count falls below ``dead_code_threshold`` is restarted from a random current latent
    (in both modes).
    """

    vision_hidden_size: int = 32
    vision_depth: int = 2
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    vision_base_image_size: int = 128
    text_vocab_size: int = 512
    text_hidden_size: int = 32
    text_depth: int = 1
    text_heads: int = 2
    text_max_length: int = 64
    projection_dim: int = 32
    codebook_size: int = 64
    code_dim: int = 16
    commitment_beta: float = 0.25
    codebook_update: str = "ema"
    ema_decay: float = 0.9
    dead_code_threshold: float = 0.05

    def __post_init__(self):
        if self.codebook_update not in ("ema", "learnable"):
            raise ValueError(f"codebook_update must be 'ema' or 'learnable', got {self.codebook_update!r}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.vision_hidden_size % self.vision_heads or self.text_hidden_size % self.text_heads:
            raise ValueError("hidden sizes must be divisible by their head counts")

    def vision_config(self) -> GlmImageVisionConfig:
        """The ``GlmImageVisionConfig`` of the tower (16 px patches, no spatial merge)."""
        return GlmImageVisionConfig(
            depth=self.vision_depth,
            hidden_size=self.vision_hidden_size,
            num_heads=self.vision_heads,
            intermediate_size=self.vision_intermediate_size,
            image_size=self.vision_base_image_size,
            patch_size=16,
            spatial_merge_size=1,
        )

    def vq_config(self) -> GlmImageVQVAEConfig:
        """The ``GlmImageVQVAEConfig`` of the quantizer."""
        return GlmImageVQVAEConfig(
            embed_dim=self.code_dim, num_embeddings=self.codebook_size, latent_channels=self.vision_hidden_size
        )


def _check_pixel_batch(batch: dict) -> torch.Tensor:
    pixel_values = batch.get("pixel_values")
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(f"batch['pixel_values'] must be a (B, 3, H, W) tensor, got {shape}")
    if pixel_values.shape[-1] % 16 or pixel_values.shape[-2] % 16:
        raise ValueError(f"batch['pixel_values'] sides must be multiples of 16, got {tuple(pixel_values.shape[-2:])}")
    return pixel_values


class TinyTextTower(nn.Module):
    """Caption encoder for SigLIP training: token + position embeddings, a pre-norm transformer
    encoder, masked mean pooling and a linear projection.

    forward(text_ids (B, T) int64, text_mask (B, T) bool) -> (B, out_dim) float.
    """

    def __init__(self, vocab_size: int, hidden_size: int, depth: int, heads: int, max_length: int, out_dim: int):
        super().__init__()
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_length, hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size, heads, 4 * hidden_size, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(hidden_size)
        self.projection = nn.Linear(hidden_size, out_dim)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        if text_ids.shape[1] > self.max_length:
            raise ValueError(f"text_ids length {text_ids.shape[1]} exceeds text_max_length {self.max_length}")
        mask = text_mask.bool()
        positions = torch.arange(text_ids.shape[1], device=text_ids.device)
        hidden = self.token_embedding(text_ids) + self.position_embedding(positions)
        hidden = self.final_norm(self.encoder(hidden, src_key_padding_mask=~mask))
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.projection(pooled)


class SigLIPStageModel(nn.Module):
    """Stage-1 bundle: ``visual`` (GlmImageVisionModel), ``text_tower``, ``image_head`` (mean-pooled
    patch features -> projection), learnable ``logit_scale`` (log) and ``logit_bias`` (SigLIP init:
    log 10 and -10)."""

    def __init__(self, visual: GlmImageVisionModel, text_tower: TinyTextTower, projection_dim: int):
        super().__init__()
        self.visual = visual
        self.text_tower = text_tower
        self.image_head = nn.Linear(visual.config.hidden_size, projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        self.loss_fn = SigLipLoss()

    def patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, h, w, hidden) vision tower features (what the quantizer later codes)."""
        return torch.stack(encode_vision_features(self.visual, pixel_values))

    def image_embeddings(self, pixel_values: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) -> (B, projection_dim) L2-normalised image embeddings (mean-pooled patches);
        ``features`` (B, h, w, hidden) reuses a ``patch_features`` result."""
        features = self.patch_features(pixel_values) if features is None else features
        return F.normalize(self.image_head(features.mean(dim=(1, 2))), dim=-1)

    def region_embeddings(self, features: torch.Tensor, region_sample: torch.Tensor, region_cells: torch.Tensor) -> torch.Tensor:
        """Embeddings of image regions: the mean of the patches a region covers, through ``image_head``.

        features: (B, h, w, hidden); region_sample: (R,) int64 image of each region; region_cells:
        (R, h * w) bool patches each region covers (at least one). Returns (R, projection_dim), L2-normalised.
        """
        flat = features.flatten(1, 2)[region_sample]  # (R, h * w, hidden)
        weights = region_cells.to(flat.dtype)
        pooled = (flat * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0)
        return F.normalize(self.image_head(pooled), dim=-1)

    def text_embeddings(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and mask -> (B, projection_dim) L2-normalised text embeddings."""
        return F.normalize(self.text_tower(text_ids, text_mask), dim=-1)


def build_siglip_stage(
    config: ImageTokenizerTrainingConfig, visual: GlmImageVisionModel | None = None
) -> SigLIPStageModel:
    """A trainable stage-1 bundle; ``visual`` lets training continue from an existing tower (e.g. a
    SigLIP2 checkpoint mapped with ``glm_vision_state_dict_from_siglip2``)."""
    visual = visual if visual is not None else GlmImageVisionModel(config.vision_config())
    text_tower = TinyTextTower(
        config.text_vocab_size,
        config.text_hidden_size,
        config.text_depth,
        config.text_heads,
        config.text_max_length,
        config.projection_dim,
    )
    return SigLIPStageModel(visual.train(), text_tower, config.projection_dim)


def siglip_stage_loss(model: SigLIPStageModel, batch: dict, region_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Sigmoid contrastive loss of one image-caption batch.

    batch: ``pixel_values`` (B, 3, H, W), ``text_ids`` (B, T) int64, optional ``text_mask`` (B, T),
    optional ``negative_text_ids`` / ``negative_text_mask`` (B, T): one hard-negative caption per
    image, each a negative for every image (the sigmoid loss's pairwise terms, summed and divided by B
    as for the in-batch pairs).
    Optional grounded regions (R of them over the batch): ``region_sample`` (R,) int64 image index,
    ``region_cells`` (R, h * w) bool patches covered, and the region's phrase: ``region_text_ids``
    (R, T), or ``region_phrase_ids`` (U, T) distinct phrases with ``region_phrase_index`` (R,). Each
    region's mean patch feature is contrasted with every distinct phrase of the batch (sigmoid loss,
    positive for its own), weighted by ``region_weight``: the per-object signal a patch tokenizer needs, which one
    caption per image gives only weakly (SigLIP 2 adds local objectives for the same reason).
    Returns (loss, metrics) with metrics ``siglip_loss`` (the total), ``logit_scale`` (exp), ``logit_bias`` and
    ``retrieval_accuracy`` (image -> caption top-1 within the batch), plus, with negatives,
    ``hard_negative_accuracy`` (fraction of images closer to their caption than to its hard negative),
    and with regions ``region_loss`` and ``region_accuracy`` (region -> a phrase equal to its own, top-1).
    """
    pixel_values = _check_pixel_batch(batch)
    text_ids = batch.get("text_ids")
    if not isinstance(text_ids, torch.Tensor) or text_ids.ndim != 2 or text_ids.shape[0] != pixel_values.shape[0]:
        raise ValueError(f"batch['text_ids'] must be a (B, T) tensor with B = {pixel_values.shape[0]}")
    text_mask = batch.get("text_mask")
    if text_mask is None:
        text_mask = torch.ones_like(text_ids, dtype=torch.bool)
    features = model.patch_features(pixel_values)
    image_embeddings = model.image_embeddings(pixel_values, features)
    text_embeddings = model.text_embeddings(text_ids, text_mask)
    logit_scale = model.logit_scale.exp()
    loss = model.loss_fn(image_embeddings, text_embeddings, logit_scale, model.logit_bias)
    region_metrics = {}
    if (batch.get("region_text_ids") is not None or batch.get("region_phrase_ids") is not None) and region_weight > 0:
        region_loss, region_metrics = _region_loss(model, features, batch, logit_scale)
        loss = loss + region_weight * region_loss
    negative_ids = batch.get("negative_text_ids")
    negative_embeddings = None
    if negative_ids is not None:
        if not isinstance(negative_ids, torch.Tensor) or negative_ids.shape != text_ids.shape:
            raise ValueError(f"batch['negative_text_ids'] must be a tensor shaped like text_ids {tuple(text_ids.shape)}")
        negative_mask = batch.get("negative_text_mask")
        if negative_mask is None:
            negative_mask = torch.ones_like(negative_ids, dtype=torch.bool)
        negative_embeddings = model.text_embeddings(negative_ids, negative_mask)
        negative_logits = model.loss_fn.get_logits(image_embeddings, negative_embeddings, logit_scale, model.logit_bias)
        loss = loss - F.logsigmoid(-negative_logits).sum() / image_embeddings.shape[0]
    with torch.no_grad():
        similarity = image_embeddings @ text_embeddings.T
        accuracy = (similarity.argmax(dim=1) == torch.arange(len(similarity), device=similarity.device)).float().mean()
    metrics = {
        "siglip_loss": loss.item(),
        "logit_scale": logit_scale.item(),
        "logit_bias": model.logit_bias.item(),
        "retrieval_accuracy": accuracy.item(),
    }
    if negative_embeddings is not None:
        with torch.no_grad():
            positive = (image_embeddings * text_embeddings).sum(-1)
            negative = (image_embeddings * negative_embeddings).sum(-1)
            metrics["hard_negative_accuracy"] = (positive > negative).float().mean().item()
    metrics.update(region_metrics)
    return loss, metrics


def _region_loss(model: SigLIPStageModel, features: torch.Tensor, batch: dict, logit_scale: torch.Tensor):
    """Sigmoid loss between every region of the batch and every distinct region phrase (positive for
    its own), divided by the number of regions; and its metrics. Phrases come as ``region_phrase_ids``
    (U, T) with ``region_phrase_index`` (R,), or as ``region_text_ids`` (R, T), made distinct here."""
    region_sample, region_cells = batch["region_sample"], batch["region_cells"]
    if batch.get("region_phrase_ids") is not None:
        phrase_ids, phrase_index = batch["region_phrase_ids"], batch.get("region_phrase_index")
    else:
        phrase_ids, phrase_index = torch.unique(batch["region_text_ids"], dim=0, return_inverse=True)
    count = int(region_sample.shape[0])
    cells = features.shape[1] * features.shape[2]
    if (region_cells.shape[0] != count or region_cells.shape[1] != cells or not isinstance(phrase_index, torch.Tensor)
            or phrase_index.shape != (count,) or int(phrase_index.max()) >= phrase_ids.shape[0]):
        raise ValueError(
            f"batch regions disagree: region_sample {tuple(region_sample.shape)}, region_cells {tuple(region_cells.shape)} "
            f"(needs (R, {cells})), a phrase per region (region_text_ids (R, T), or region_phrase_index (R,) into region_phrase_ids)"
        )
    regions = model.region_embeddings(features, region_sample, region_cells)
    phrases = model.text_embeddings(phrase_ids, phrase_ids > 0)
    same = phrase_index.unsqueeze(1) == torch.arange(phrases.shape[0], device=phrase_index.device)
    labels = same.to(regions.dtype) * 2 - 1
    logits = model.loss_fn.get_logits(regions, phrases, logit_scale, model.logit_bias)
    loss = -F.logsigmoid(labels * logits).sum() / count
    with torch.no_grad():
        accuracy = (logits.argmax(dim=1) == phrase_index).float().mean()
    return loss, {"region_loss": loss.item(), "region_accuracy": accuracy.item()}


@dataclass
class VQStageOutput:
    """What ``VQStageModel.forward`` returns (N = B * h * w token positions).

    ids: (B, h, w) int64; latents: (N, code_dim) normalised pre-quantisation vectors; quantized:
    (N, code_dim) their codes; features: (N, hidden) frozen encoder features; reconstruction:
    (N, hidden) ``post_quant_conv`` of the straight-through codes.
    """

    ids: torch.Tensor
    latents: torch.Tensor
    quantized: torch.Tensor
    quantized_straight_through: torch.Tensor
    features: torch.Tensor
    reconstruction: torch.Tensor


class VQStageModel(nn.Module):
    """Stage-2 bundle: a frozen ``visual`` tower and a trainable ``vqmodel`` (GlmImageVQVAE: official
    weight names), plus EMA statistics (``ema_cluster_size`` (K,), ``ema_code_sum`` (K, code_dim))
    that live outside ``vqmodel`` so its state stays official."""

    def __init__(self, visual: GlmImageVisionModel, vqmodel: GlmImageVQVAE, config: ImageTokenizerTrainingConfig):
        super().__init__()
        self.config = config
        self.visual = visual.eval().requires_grad_(False)
        self.vqmodel = vqmodel.train()
        if config.codebook_update == "ema":
            self.vqmodel.quantize.embedding.weight.requires_grad_(False)
        codebook = self.vqmodel.quantize.embedding.weight
        self.register_buffer("ema_cluster_size", torch.ones(codebook.shape[0]))
        self.register_buffer("ema_code_sum", F.normalize(codebook.detach().clone(), dim=-1))

    def train(self, mode: bool = True) -> "VQStageModel":
        """Switch the quantizer's mode; the encoder always stays in eval mode (frozen)."""
        super().train(mode)
        self.visual.eval()
        return self

    def codebook(self) -> torch.Tensor:
        """(K, code_dim) L2-normalised codebook."""
        return F.normalize(self.vqmodel.quantize.embedding.weight, dim=-1)

    def forward(self, pixel_values: torch.Tensor) -> VQStageOutput:
        """(B, 3, H, W) normalised pixels -> ``VQStageOutput``; in training mode also updates the EMA
        statistics and restarts dead codes."""
        with torch.no_grad():
            grids = encode_vision_features(self.visual, pixel_values)
        batch, height, width, hidden = len(grids), grids[0].shape[0], grids[0].shape[1], grids[0].shape[2]
        features = torch.stack(grids).reshape(-1, hidden)
        quant_conv = self.vqmodel.quant_conv
        latents = F.normalize(F.linear(features, quant_conv.weight.flatten(1), quant_conv.bias), dim=-1)
        codebook = self.codebook()
        ids = (latents.detach() @ codebook.T).argmax(dim=-1)
        if self.training:
            self._update_codebook(latents.detach(), ids)
            codebook = self.codebook()
        quantized = codebook[ids]
        straight_through = latents + (quantized - latents).detach()
        reconstruction = F.linear(
            straight_through, self.vqmodel.post_quant_conv.weight.flatten(1), self.vqmodel.post_quant_conv.bias
        )
        return VQStageOutput(
            ids=ids.view(batch, height, width),
            latents=latents,
            quantized=quantized,
            quantized_straight_through=straight_through,
            features=features,
            reconstruction=reconstruction,
        )

    @torch.no_grad()
    def _update_codebook(self, latents: torch.Tensor, ids: torch.Tensor) -> None:
        """Track EMA code usage; in "ema" mode also move each code to the EMA mean of its latents.
        Codes whose EMA usage fell below the threshold restart from random current latents."""
        decay = self.config.ema_decay
        one_hot = F.one_hot(ids, self.ema_cluster_size.shape[0]).to(latents.dtype)
        self.ema_cluster_size.mul_(decay).add_(one_hot.sum(0), alpha=1 - decay)
        self.ema_code_sum.mul_(decay).add_(one_hot.T @ latents, alpha=1 - decay)
        weight = self.vqmodel.quantize.embedding.weight
        if self.config.codebook_update == "ema":
            weight.copy_(self.ema_code_sum / self.ema_cluster_size.unsqueeze(1))
        dead = self.ema_cluster_size < self.config.dead_code_threshold
        if dead.any():
            picks = latents[torch.randint(0, latents.shape[0], (int(dead.sum()),), device=latents.device)]
            weight[dead] = picks
            self.ema_code_sum[dead] = picks
            self.ema_cluster_size[dead] = 1.0

    def to_tokenizer(self, size_policy: str = "understanding") -> SigLIPVQTokenizer:
        """The trained encoder + quantizer as an inference ``SigLIPVQTokenizer`` (shares weights)."""
        return SigLIPVQTokenizer(self.visual, self.vqmodel, ImagePreprocessorConfig(), size_policy)


def build_vq_stage(config: ImageTokenizerTrainingConfig, visual: GlmImageVisionModel) -> VQStageModel:
    """A trainable stage-2 bundle on the frozen tower ``visual``; the codebook starts from random unit
    vectors and ``quant_conv`` / ``post_quant_conv`` from transformers' init."""
    if visual.config.hidden_size != config.vision_hidden_size:
        raise ValueError(
            f"visual hidden_size {visual.config.hidden_size} != config.vision_hidden_size {config.vision_hidden_size}"
        )
    vqmodel = GlmImageVQVAE(config.vq_config())
    with torch.no_grad():
        codebook = vqmodel.quantize.embedding.weight
        codebook.copy_(F.normalize(torch.randn_like(codebook), dim=-1))
    return VQStageModel(visual, vqmodel, config)


def codebook_statistics(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Usage of a batch of code ids (any shape, int64): ``codebook_usage`` (fraction of codes used at
    least once) and ``perplexity`` (exp of the entropy of the code histogram)."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
    probabilities = counts / counts.sum().clamp_min(1.0)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
    return {"codebook_usage": (counts > 0).float().mean().item(), "perplexity": entropy.exp().item()}


def vq_stage_loss(model: VQStageModel, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Quantizer loss of one batch: reconstruction (1 - cosine of ``post_quant_conv``(codes) with the
    encoder features) + beta * commitment (squared distance latent -> its code, code detached)
    (+ codebook loss, latent detached, when the codebook is learnable).

    batch: ``pixel_values`` (B, 3, H, W). Returns (loss, metrics) with ``vq_loss``,
    ``reconstruction_loss``, ``commitment_loss``, ``codebook_usage``, ``perplexity``,
    ``quantized_cosine`` (mean cosine code vs latent) and ``dead_codes`` (EMA usage below threshold).
    """
    pixel_values = _check_pixel_batch(batch)
    output = model(pixel_values)
    reconstruction_loss = 1.0 - F.cosine_similarity(output.reconstruction, output.features, dim=-1).mean()
    commitment_loss = (output.latents - output.quantized.detach()).pow(2).sum(-1).mean()
    loss = reconstruction_loss + model.config.commitment_beta * commitment_loss
    if model.config.codebook_update == "learnable":
        loss = loss + (output.quantized - output.latents.detach()).pow(2).sum(-1).mean()
    metrics = codebook_statistics(output.ids, model.config.codebook_size)
    metrics.update(
        {
            "vq_loss": loss.item(),
            "reconstruction_loss": reconstruction_loss.item(),
            "commitment_loss": commitment_loss.item(),
            "quantized_cosine": (output.latents * output.quantized).sum(-1).mean().item(),
            "dead_codes": float((model.ema_cluster_size < model.config.dead_code_threshold).sum().item()),
        }
    )
    return loss, metrics
