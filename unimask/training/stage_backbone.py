"""The ``backbone`` stage: masked-diffusion pretraining / SFT of ``LLaDA2MoeModelLM``.

Samples carry pre-built token sequences in their json: ``"input_ids"`` (list of int ids in the
joint text + image-code vocabulary) and, for SFT, ``"response_start"`` (index of the first
response token; earlier tokens are the clean prompt). With ``data.token_budget`` several
sequences are packed per row and ``document_ids`` keep them apart (packed bidirectional or
block-diffusion masks, positions restarting per document).

``model``: ``{"preset": "<configs/models/backbone/NAME.yaml>"}`` plus config.json keys to override.
``stage_options``:
    mask_token_id (int, required), objective ("masked" | "block", default "masked"),
    block_length (int, block objective; default 32) or block_schedule ({warmup_steps,
    stable_steps, decay_steps, start_block_length, final_block_length}: LLaDA2.0's WSD schedule
    over the row length), router_z_loss_weight (float, default 0.0; > 0 also reports expert load),
    init (a saved backbone folder, ``*.safetensors`` of this recipe's architecture, to continue from;
    default: random weights), grow_after (list of layer indices of the ``init`` model: each is followed by a
    copy of itself whose residual outputs are zero, so the deeper model starts from the init model's exact
    logits; the recipe's ``num_hidden_layers`` must be the init's plus the list's length; see
    ``unimask.unimodal.depth_growth``), image_embeddings_init (a saved image tokenizer folder: a fresh model's
    image-code rows of the input embedding and output head start as its codebook, see
    ``unimask.training.code_embeddings``; not with ``init``), text_loss_weight (float > 0, default
    1.0: factor on the loss of masked text positions against image codes),
    expert_bias_update_rate (float >= 0, default 0.0: off; > 0 moves every MoE layer's
    ``expert_bias`` towards equal expert load after each optimizer step, auxiliary-loss-free
    balancing, see ``unimask.training.expert_balance``; 1e-3 is the usual rate; needs
    ``moe_router_enable_expert_bias``), answer_full_mask_rate (float in [0, 1], default 0.0: the
    probability that a document whose response is all text (an understanding or chat answer) has
    every response position masked whatever its row's ratio, weighted as at ratio 1: the state a
    sampler starts an answer from, which the uniform ratios reach in few rows; see ``force_masked``
    of ``unimask.unimodal.losses.masked_diffusion_loss``; objective "masked" only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from unimask.config import ConfigError, check_call_kwargs
from unimask.presets import available_component_presets, read_component_preset
from unimask.data.packing import pack_documents
from unimask.training.stages import Stage
from unimask.unimodal.losses import check_text_loss_weight

__all__ = ["BackboneStage", "available_backbone_presets"]

_OPTIONS = {"mask_token_id", "objective", "block_length", "block_schedule", "router_z_loss_weight", "init", "grow_after",
            "image_embeddings_init", "text_loss_weight", "expert_bias_update_rate", "answer_full_mask_rate"}


def available_backbone_presets() -> list[str]:
    """Names of ``configs/models/backbone/*.yaml``."""
    return available_component_presets("backbone")


def _all_text_responses(maskable: torch.Tensor, modality: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: the maskable (response) positions of the packed documents whose response holds no image
    code (modality 1), i.e. understanding and chat answers; inputs are (B, L) as ``make_batch`` returns them."""
    image_positions = (maskable & (modality == 1)).long()
    per_document = torch.zeros(document_ids.shape[0], int(document_ids.max()) + 1, dtype=torch.long, device=document_ids.device)
    per_document.scatter_add_(1, document_ids, image_positions)
    return maskable & (per_document.gather(1, document_ids) == 0)


class BackboneStage(Stage):
    """Masked-diffusion (``objective: masked``) or block-diffusion (``objective: block``) ELBO."""

    name = "backbone"
    decode_images = False

    def check_config(self) -> None:
        from unimask.unimodal.configuration_llada2_moe import LLaDA2MoeConfig

        model = dict(self.recipe.model)
        preset = model.pop("preset", "tiny")
        if preset not in available_backbone_presets():
            raise ConfigError(f"model.preset: unknown model preset {preset!r} for stage 'backbone'; available: {available_backbone_presets()}")
        values = {**read_component_preset("backbone", preset), **model}
        values.pop("architectures", None)
        values.pop("model_type", None)
        check_call_kwargs(LLaDA2MoeConfig.__init__, {k: v for k, v in model.items()}, "model")
        self.model_config = LLaDA2MoeConfig(**values)
        options = dict(self.recipe.stage_options)
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ConfigError(f"stage_options: unknown key(s) {unknown} for stage 'backbone'; allowed: {sorted(_OPTIONS)}")
        if not isinstance(options.get("mask_token_id"), int) or not 0 <= options["mask_token_id"] < self.model_config.vocab_size:
            raise ConfigError(f"stage_options.mask_token_id must be an int in [0, {self.model_config.vocab_size}), got {options.get('mask_token_id')!r}")
        self.mask_token_id = options["mask_token_id"]
        self.objective = options.get("objective", "masked")
        if self.objective not in ("masked", "block"):
            raise ConfigError(f"stage_options.objective must be 'masked' or 'block', got {self.objective!r}")
        self.block_length = int(options.get("block_length", 32))
        self.block_schedule = options.get("block_schedule")
        self.router_z_loss_weight = float(options.get("router_z_loss_weight", 0.0))
        try:
            self.text_loss_weight = check_text_loss_weight(options.get("text_loss_weight", 1.0))
        except ValueError as err:
            raise ConfigError(f"stage_options.{err}") from None
        rate = options.get("expert_bias_update_rate", 0.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ConfigError(f"stage_options.expert_bias_update_rate must be a float in [0, 1) (0: no balancing), got {rate!r}")
        if rate and not self.model_config.moe_router_enable_expert_bias:
            raise ConfigError("stage_options.expert_bias_update_rate > 0 needs model.moe_router_enable_expert_bias: true")
        self.expert_bias_update_rate = float(rate)
        full_mask = options.get("answer_full_mask_rate", 0.0)
        if isinstance(full_mask, bool) or not isinstance(full_mask, (int, float)) or not 0 <= full_mask <= 1:
            raise ConfigError(f"stage_options.answer_full_mask_rate must be a float in [0, 1] (0: off), got {full_mask!r}")
        if full_mask and self.objective != "masked":
            raise ConfigError("stage_options.answer_full_mask_rate needs objective: masked")
        self.answer_full_mask_rate = float(full_mask)
        self.balancer = None
        self.init = options.get("init")
        if self.init is not None:
            from unimask.unimodal.checkpoint_layout import checkpoint_files

            try:
                checkpoint_files(self.init)
            except ValueError:
                raise ConfigError(f"stage_options.init={self.init!r} is not a saved backbone folder (no *.safetensors)") from None
        self.grow_after = options.get("grow_after")
        if self.grow_after is not None:
            self._check_grow_after()
        self.image_embeddings_init = options.get("image_embeddings_init")
        if self.image_embeddings_init is not None:
            if self.init is not None:
                raise ConfigError("stage_options.image_embeddings_init starts a fresh model; it cannot be combined with init")
            if not (Path(self.image_embeddings_init) / "config.json").is_file():
                raise ConfigError(f"stage_options.image_embeddings_init={self.image_embeddings_init!r} is not a saved image tokenizer folder (no config.json)")
        self.pad_id = self.model_config.pad_token_id if self.model_config.pad_token_id is not None else 0
        self.current_step = 0

    def _check_grow_after(self) -> None:
        """``grow_after`` (layers of the ``init`` model each followed by a new zero-output copy) needs ``init`` and
        a recipe with that many more layers than the ``init`` folder's config."""
        from unimask.checkpoint_files import read_json_object
        from unimask.unimodal.depth_growth import check_grow_after

        if self.init is None:
            raise ConfigError("stage_options.grow_after grows the model of stage_options.init; set init too")
        try:
            init_layers = read_json_object(Path(self.init) / "config.json").get("num_hidden_layers")
        except ValueError as err:
            raise ConfigError(f"stage_options.init={self.init!r}: {err}") from None
        if not isinstance(init_layers, int):
            raise ConfigError(f"stage_options.init={self.init!r}: config.json has no int num_hidden_layers")
        try:
            self.grow_after = check_grow_after(self.grow_after, init_layers)
        except ValueError as err:
            raise ConfigError(f"stage_options.{err}") from None
        if self.model_config.num_hidden_layers != init_layers + len(self.grow_after):
            raise ConfigError(f"stage_options.grow_after={self.grow_after} adds {len(self.grow_after)} layers to the "
                              f"{init_layers} of init, so model.num_hidden_layers must be "
                              f"{init_layers + len(self.grow_after)}, got {self.model_config.num_hidden_layers}")

    def build_model(self) -> nn.Module:
        model = self._build_weights()
        if self.expert_bias_update_rate and self.balancer is None:  # the first model built is the one trained
            from unimask.training.expert_balance import ExpertBiasBalancer

            self.balancer = ExpertBiasBalancer(model, self.expert_bias_update_rate)
        return model

    def after_optimizer_step(self) -> dict[str, float]:
        return self.balancer.step() if self.balancer is not None else {}

    def _build_weights(self) -> nn.Module:
        from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

        if self.init is None:
            model = LLaDA2MoeModelLM(self.model_config)
            if self.image_embeddings_init is not None:
                from unimask.training.code_embeddings import init_image_code_rows

                try:
                    init_image_code_rows(model, self.image_embeddings_init, seed=self.recipe.seed)
                except ValueError as err:
                    raise ConfigError(f"stage_options.image_embeddings_init: {err}") from None
            return model
        if self.grow_after is not None:
            from unimask.unimodal.depth_growth import grow_backbone_depth

            source = LLaDA2MoeModelLM.from_pretrained(self.init, dtype=torch.float32)
            try:
                return grow_backbone_depth(source, LLaDA2MoeModelLM(self.model_config), self.grow_after)
            except ValueError as err:
                raise ConfigError(f"stage_options.grow_after={self.grow_after}: {err}") from None
        try:  # the recipe's architecture, the folder's weights (official layout, strictly checked)
            return LLaDA2MoeModelLM.from_pretrained(self.init, config=self.model_config, dtype=torch.float32)
        except ValueError as err:
            raise ConfigError(f"stage_options.init={self.init!r} does not fit model: {err}") from None

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.model.layers)

    def on_step(self, step: int) -> None:
        self.current_step = step
        if self.balancer is not None:  # loads of a step skipped for a non-finite loss must not carry over
            self.balancer.reset()

    def sample_length(self, sample: dict[str, Any]) -> int:
        return len(sample["json"]["input_ids"])

    def make_batch(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        documents, responses = [], []
        for sample in samples:
            meta = sample["json"]
            if "input_ids" not in meta:
                raise ValueError(f"sample {sample.get('__key__')!r} has no json 'input_ids' (the backbone stage reads pre-built sequences)")
            ids = torch.tensor(meta["input_ids"], dtype=torch.long)
            documents.append(ids)
            response = torch.zeros_like(ids, dtype=torch.bool)
            response[int(meta.get("response_start", 0)) :] = True
            responses.append(response)
        budget = self.recipe.data.token_budget or max(len(d) for d in documents)
        rows = self.recipe.micro_batch_size if self.recipe.data.token_budget else len(documents)
        if not self.recipe.data.token_budget:
            packed = [pack_documents([d], budget, self.pad_id) for d in documents]
            ids = torch.cat([p.ids for p in packed])
            document_ids = torch.cat([p.document_ids for p in packed])
            loss_mask = torch.cat([p.loss_mask for p in packed])
        else:
            packed_rows = pack_documents(documents, budget, self.pad_id, rows=rows)
            ids, document_ids, loss_mask = packed_rows.ids, packed_rows.document_ids, packed_rows.loss_mask
        maskable = torch.zeros_like(loss_mask)
        flat_response = torch.cat([r[:budget] for r in responses])
        maskable[loss_mask] = flat_response
        modality = (ids >= self.model_config.image_token_offset).long()
        return {"input_ids": ids, "document_ids": document_ids, "maskable": maskable, "modality": modality, "token_count": int(loss_mask.sum())}

    def _forced_answers(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, L) bool: the answer positions of the documents drawn (each with ``answer_full_mask_rate``) to be
        fully masked; None when the rate is 0."""
        if not self.answer_full_mask_rate:
            return None
        document_ids = batch["document_ids"]
        draws = torch.rand(document_ids.shape[0], int(document_ids.max()) + 1)
        chosen = draws.gather(1, document_ids.cpu()) < self.answer_full_mask_rate
        return _all_text_responses(batch["maskable"], batch["modality"], document_ids) & chosen.to(document_ids.device)

    def _current_block_length(self, seq_len: int) -> int:
        if self.block_schedule is None:
            return min(self.block_length, seq_len)
        from unimask.unimodal.losses import block_size_schedule

        return block_size_schedule(self.current_step, max_block_length=seq_len, **self.block_schedule)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        from unimask.unimodal.attention_masks import bidirectional_mask, positions_in_documents
        from unimask.unimodal.losses import block_diffusion_loss, masked_diffusion_loss

        ids, document_ids = batch["input_ids"], batch["document_ids"]
        common = dict(mask_token_id=self.mask_token_id, maskable=batch["maskable"], modality=batch["modality"],
                      router_z_loss_weight=self.router_z_loss_weight, text_loss_weight=self.text_loss_weight)
        if self.objective == "block":
            return block_diffusion_loss(model, ids, block_length=self._current_block_length(ids.shape[1]), document_ids=document_ids, **common)
        mask = bidirectional_mask(ids.shape[1], document_ids=document_ids, device=ids.device)
        return masked_diffusion_loss(model, ids, attention_mask=mask, position_ids=positions_in_documents(document_ids),
                                     force_masked=self._forced_answers(batch), **common)

    def batch_counts(self, batch: dict[str, Any]) -> dict[str, int]:
        return {"samples": int(batch["input_ids"].shape[0]), "tokens": batch["token_count"], "images": 0}

    def flops_per_step(self, model: nn.Module, counts: dict[str, int]) -> float:
        config = self.model_config
        per_expert = 3 * config.hidden_size * config.moe_intermediate_size
        inactive = (config.num_experts - config.num_experts_per_tok) * per_expert * max(0, config.num_hidden_layers - config.first_k_dense_replace)
        active = sum(p.numel() for p in model.parameters()) - inactive
        return 6.0 * active * counts["tokens"]

    def export(self, model: nn.Module, out_dir: Path) -> Path:
        model.save_pretrained(out_dir, safe_serialization=True)
        return out_dir
