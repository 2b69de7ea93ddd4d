"""`UniPipelineBase`: the components of a unified model and the steps every task pipeline shares.

A diffusers `DiffusionPipeline` holding one backbone (`LLaDA2MoeModelLM`), the text tokenizer, the
SigLIP-VQ image tokenizer and the image decoder (`SemanticImageDecoder`, itself a small pipeline), plus the
`TokenLayout` and the per-task `GenerationDefaults`. Task pipelines (`pipeline_tasks.py`) subclass it and
write their ``__call__`` from the shared steps here:

    encode_images -> build sequences (SequenceBuilder) -> sample (MaskedDiffusionSampler) -> decode_grids

`from_pipe` builds any task pipeline on the same module objects (no weight copies).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline

from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.default_model import resolve_model_path
from unimask.pipelines.call_inputs import split_image_batch
from unimask.pipelines.checkpoint_loading import OFFICIAL_LAYOUT, load_components, load_decoder
from unimask.pipelines.generation_defaults import GenerationDefaults
from unimask.pipelines.sequence_batching import specs_to_sampler_inputs, unpad_rows
from unimask.pipelines.unchanged_patches import DEFAULT_TOLERANCE, check_tolerance, copy_unchanged_patches
from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer
from unimask.tokenizers.sequence_builders import SequenceBuilder, SequenceSpec
from unimask.tokenizers.token_layout import TokenKind, TokenLayout
from unimask.unimodal.sampler import MaskedDiffusionSampler
from unimask.unimodal.sampler_config import SamplerConfig, SamplingStats

StepCallback = Callable[["UniPipelineBase", int, int, dict], Any]


def _shared_if_same(current: torch.nn.Module, loaded: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``current`` when ``loaded`` holds exactly its weights (one copy on the device), else ``loaded`` moved
    to ``device`` and ``current``'s dtype."""
    mine, theirs = current.state_dict(), loaded.state_dict()
    if mine.keys() == theirs.keys() and all(
        mine[name].shape == theirs[name].shape and torch.equal(mine[name].cpu(), theirs[name].to(mine[name].dtype).cpu())
        for name in mine
    ):
        return current
    dtype = next(current.parameters()).dtype
    return loaded.to(device=device, dtype=dtype)


def _per_prompt(flat: list[Any], images_per_prompt: list[list[Any]]) -> list[list[Any]]:
    """Split one result per input image (in the flattened order) back into one list per prompt."""
    result, start = [], 0
    for images in images_per_prompt:
        result.append(flat[start : start + len(images)])
        start += len(images)
    return result


class StageStats:
    """Collects per-stage statistics of one call: NFE, wall time and the sampler's `SamplingStats`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.nfe: dict[str, int] = {}
        self.time_s: dict[str, float] = {}
        self.stages: dict[str, Any] = {}

    def add(self, stage: str, nfe: int, seconds: float, details: Any) -> None:
        """Accumulate ``nfe`` forward passes and ``seconds`` under ``stage``; keep the latest details
        (a list of details when a stage runs several times, e.g. interleaved rounds)."""
        self.nfe[stage] = self.nfe.get(stage, 0) + int(nfe)
        self.time_s[stage] = self.time_s.get(stage, 0.0) + float(seconds)
        if stage in self.stages:
            previous = self.stages[stage]
            self.stages[stage] = (previous if isinstance(previous, list) else [previous]) + [details]
        else:
            self.stages[stage] = details

    def as_dict(self) -> dict[str, Any]:
        """{"nfe", "time_s", "stages", "total_time_s"}."""
        return {
            "nfe": dict(self.nfe),
            "time_s": dict(self.time_s),
            "stages": dict(self.stages),
            "total_time_s": time.perf_counter() - self.started,
        }


class UniPipelineBase(DiffusionPipeline):
    """Components and shared steps of the unified pipelines.

    Args:
        backbone: `LLaDA2MoeModelLM` (or any module with its forward contract and a ``config`` holding
            ``vocab_size`` and ``max_position_embeddings``).
        text_tokenizer: a Hugging Face tokenizer of the checkpoint.
        image_tokenizer: `SigLIPVQTokenizer`, or None (no image inputs).
        decoder: `SemanticImageDecoder`, or None (no image outputs except ``output_type="tokens"``).
        token_layout: the joint vocabulary; None resolves it from the tokenizer by the special tokens' strings.
        generation_defaults: per-task defaults; None -> the official ones.
    """

    _optional_components = ["image_tokenizer", "decoder"]

    def __init__(
        self,
        backbone: torch.nn.Module,
        text_tokenizer: Any,
        image_tokenizer: SigLIPVQTokenizer | None = None,
        decoder: SemanticImageDecoder | None = None,
        token_layout: TokenLayout | None = None,
        generation_defaults: GenerationDefaults | None = None,
    ):
        super().__init__()
        self.register_modules(
            backbone=backbone, text_tokenizer=text_tokenizer, image_tokenizer=image_tokenizer, decoder=decoder
        )
        if token_layout is None:
            if image_tokenizer is None and decoder is None:
                raise ValueError("token_layout is required when there is neither an image_tokenizer nor a decoder")
            codebook = image_tokenizer.codebook_size if image_tokenizer is not None else decoder.sigvq.config.vocab_size
            token_layout = TokenLayout.from_tokenizer(
                text_tokenizer,
                image_token_offset=backbone.config.image_token_offset,
                codebook_size=codebook,
                vocab_size=backbone.config.vocab_size,
            )
        self.token_layout = token_layout
        self.generation_defaults = generation_defaults or GenerationDefaults()
        self._check_components()
        self._decoders: dict[str, SemanticImageDecoder] = {}
        if decoder is not None:
            self._decoders[decoder.config.decoder_variant] = decoder
        self._source: tuple[Path, str] | None = None
        self._offload_device: torch.device | None = None
        self.offload_history: list[str] = []

    def _check_components(self) -> None:
        layout = self.token_layout
        if self.backbone.config.vocab_size != layout.vocab_size:
            raise ValueError(
                f"backbone vocab_size={self.backbone.config.vocab_size} does not match the token layout's "
                f"vocab_size={layout.vocab_size}"
            )
        if self.image_tokenizer is not None and self.image_tokenizer.codebook_size != layout.codebook_size:
            raise ValueError(
                f"image_tokenizer codebook_size={self.image_tokenizer.codebook_size} does not match the token "
                f"layout's codebook_size={layout.codebook_size}"
            )
        if self.decoder is not None and self.decoder.sigvq.config.vocab_size != layout.codebook_size:
            raise ValueError(
                f"decoder codebook size {self.decoder.sigvq.config.vocab_size} does not match the token layout's "
                f"codebook_size={layout.codebook_size}"
            )

    # ------------------------------------------------------------------ building and loading

    @classmethod
    def from_pipe(cls, pipeline: UniPipelineBase, **overrides: Any) -> UniPipelineBase:
        """A ``cls`` pipeline on the same module objects as ``pipeline`` (no copy, no dtype cast).

        overrides: replace components or ``token_layout`` / ``generation_defaults``.
        """
        kwargs = {
            "backbone": pipeline.backbone,
            "text_tokenizer": pipeline.text_tokenizer,
            "image_tokenizer": pipeline.image_tokenizer,
            "decoder": pipeline.decoder,
            "token_layout": pipeline.token_layout,
            "generation_defaults": pipeline.generation_defaults,
        }
        unknown = set(overrides) - set(kwargs)
        if unknown:
            raise ValueError(f"from_pipe got unknown arguments {sorted(unknown)}; allowed: {sorted(kwargs)}")
        kwargs.update(overrides)
        new = cls(**kwargs)
        new._decoders.update({k: v for k, v in pipeline._decoders.items() if k not in new._decoders})
        new._source = pipeline._source
        new._offload_device = pipeline._offload_device
        if hasattr(pipeline, "_progress_bar_config"):
            new._progress_bar_config = dict(pipeline._progress_bar_config)
        return new

    def sibling(self, cls: type[UniPipelineBase]) -> UniPipelineBase:
        """A ``cls`` pipeline on this pipeline's modules (built once, then cached), sharing its generation
        defaults, loaded decoder variants, offload state and progress-bar settings as they are now."""
        cache = self.__dict__.setdefault("_siblings", {})
        if cls not in cache:
            cache[cls] = cls.from_pipe(self)
        pipeline = cache[cls]
        pipeline.generation_defaults = self.generation_defaults
        pipeline._offload_device = self._offload_device
        pipeline.offload_history = self.offload_history
        pipeline._decoders = self._decoders
        if hasattr(self, "_progress_bar_config"):
            pipeline._progress_bar_config = dict(self._progress_bar_config)
        return pipeline

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path | None = None,
        torch_dtype: torch.dtype | None = None,
        decoder: str | None = None,
        generation_defaults: dict[str, dict[str, Any]] | None = None,
        device: str | torch.device | None = None,
    ) -> UniPipelineBase:
        """Load a local checkpoint directory in our layout (``model_index.json``) or the official one.

        pretrained_model_name_or_path: the directory; None or ``"shapes-default"`` loads the shipped
        default model (`unimask.default_model`; a ``ValueError`` says how to build it when missing).
        torch_dtype: weight dtype (None: as stored). decoder: "turbo" | "normal" | None (see
        `checkpoint_loading.load_components`). generation_defaults: {section: {option: value}} merged over
        the checkpoint's ``generation_defaults.json``. device: move the pipeline there after loading.
        """
        root = resolve_model_path(pretrained_model_name_or_path)
        parts = load_components(root, torch_dtype=torch_dtype, decoder=decoder)
        pipe = cls(
            backbone=parts["backbone"],
            text_tokenizer=parts["text_tokenizer"],
            image_tokenizer=parts["image_tokenizer"],
            decoder=parts["decoder"],
            token_layout=parts["token_layout"],
            generation_defaults=parts["generation_defaults"].updated(generation_defaults),
        )
        pipe._source = (parts["root"], parts["layout"])
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> Path:
        """Write our layout: ``backbone/``, ``text_tokenizer/``, ``image_tokenizer/``, ``decoder/`` (the
        current decoder; other loaded variants as ``decoder-<variant>/``), ``token_layout.json``,
        ``generation_defaults.json`` and ``model_index.json``. Returns the directory."""
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(root / "backbone")
        self.text_tokenizer.save_pretrained(str(root / "text_tokenizer"))
        if self.image_tokenizer is not None:
            self.image_tokenizer.save_pretrained(root / "image_tokenizer")
        if self.decoder is not None:
            self.decoder.save_pretrained(root / "decoder")
            for variant, other in self._decoders.items():
                if other is not self.decoder:
                    other.save_pretrained(root / f"decoder-{variant}")
        self.token_layout.save_pretrained(root)
        self.generation_defaults.save_pretrained(root)
        self.save_config(root)
        return root

    # ------------------------------------------------------------------ devices

    def to(self, *args: Any, **kwargs: Any) -> UniPipelineBase:
        """Move/cast the backbone, image tokenizer and every loaded decoder (same arguments as ``torch.nn.Module.to``)."""
        for module in (self.backbone, self.image_tokenizer):
            if module is not None:
                module.to(*args, **kwargs)
        for decoder in self._decoders.values():
            decoder.to(*args, **kwargs)
        return self

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep every model on the CPU and move each to ``device`` only while it runs (the backbone while
        sampling, the image tokenizer while encoding, the decoder while decoding)."""
        target = torch.device(device)
        if gpu_id is not None and target.index is None:
            target = torch.device(target.type, gpu_id)
        self._offload_device = target
        self.to("cpu")

    def disable_model_cpu_offload(self) -> None:
        """Stop offloading; models stay where they are."""
        self._offload_device = None

    @property
    def _execution_device(self) -> torch.device:
        if self._offload_device is not None:
            return self._offload_device
        return next(self.backbone.parameters()).device

    @contextlib.contextmanager
    def _running(self, stage: str, module: Any):
        """With offload enabled: move ``module`` to the execution device for the block, back to CPU after."""
        if self._offload_device is None or module is None:
            yield
            return
        self.offload_history.append(f"{stage}:on")
        module.to(self._offload_device)
        try:
            yield
        finally:
            module.to("cpu")
            self.offload_history.append(f"{stage}:off")

    # ------------------------------------------------------------------ shared steps

    def sequence_builder(self) -> SequenceBuilder:
        """A builder with the layout, the text tokenizer and the backbone's context as ``max_length``."""
        return SequenceBuilder(
            self.token_layout, self.text_tokenizer, max_length=self.backbone.config.max_position_embeddings
        )

    def build_sequences(self, build: Callable[[], SequenceSpec], argument: str) -> SequenceSpec:
        """Run a builder call; a context overflow is re-raised naming ``argument`` (e.g. "image")."""
        try:
            return build()
        except ValueError as error:
            if "context" in str(error):
                raise ValueError(f"{argument}: the request does not fit the model's context: {error}") from error
            raise

    def encode_images(self, images_per_prompt: list[list[Any]], image_size: Any) -> list[list[torch.Tensor]]:
        """Tokenise every prompt's input images. images_per_prompt: one list of images per prompt;
        image_size: a size policy name or (H, W) pixels. Returns one list of (h, w) int64 grids per prompt."""
        flat = [image for images in images_per_prompt for image in images]
        if not flat:
            return [[] for _ in images_per_prompt]
        if self.image_tokenizer is None:
            raise ValueError("image: this pipeline has no image tokenizer, so it cannot take input images")
        target = tuple(image_size) if isinstance(image_size, list) else image_size
        with self._running("image_tokenizer", self.image_tokenizer):
            try:
                grids = self.image_tokenizer.encode(flat, target_size=target).ids_list()
            except ValueError as error:
                raise ValueError(f"image: {error}") from error
        return _per_prompt([grid.cpu() for grid in grids], images_per_prompt)

    def reference_pixels(self, images_per_prompt: list[list[Any]], image_size: Any) -> list[list[torch.Tensor]]:
        """The input images as the image tokenizer sees them (sized and cropped by ``image_size``, as
        `encode_images` does), so that each lines up with its code grid: one list of (3, H, W) float32
        tensors in [0, 1] per prompt."""
        target = tuple(image_size) if isinstance(image_size, list) else image_size
        flat = [image for images in images_per_prompt for image in images]
        processed = self.image_tokenizer.preprocess(flat, target).pixel_values if flat else []
        config = self.image_tokenizer.preprocessor_config
        mean = torch.tensor(config.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(config.image_std, dtype=torch.float32).view(3, 1, 1)
        return _per_prompt([(values * std + mean).clamp(0, 1) for values in processed], images_per_prompt)

    def make_sampler(self) -> MaskedDiffusionSampler:
        """The masked-diffusion sampler over this backbone, with the layout's ids and per-kind vocabularies."""
        layout = self.token_layout
        kinds = [TokenKind.TEXT, TokenKind.IMAGE] + ([TokenKind.SIZE] if layout.size_token_ids else [])
        return MaskedDiffusionSampler(
            self.backbone,
            mask_id=layout.mask_id,
            eos_id=layout.eos_id,
            kind_vocab_masks={int(kind): layout.vocab_mask(kind) for kind in kinds},
        )

    def sample(
        self,
        specs: list[SequenceSpec],
        sampler_options: dict[str, Any],
        guidance: str,
        generator: Any,
        stage: str,
        stats: StageStats,
        callback_on_step_end: StepCallback | None = None,
    ) -> list[torch.Tensor]:
        """Fill every masked position of ``specs`` in one batched sampler call.

        guidance: "none" | "simple" | "three_way" (which unconditional branches to add). The callback gets
        ``(pipe, step_index, block_index, {"stage", "sequences" (B, L), "token_grids", "preview"})`` where
        ``token_grids`` are the image slots' current codes (-1 where still masked) and ``preview()`` decodes
        them with the decoder's cheap preview path. Returns each row's sequence, (len_i,) int64 on the CPU.
        """
        layout = self.token_layout
        device = self._execution_device
        inputs = specs_to_sampler_inputs(specs, layout, guidance)
        kwargs = {name: value.to(device) for name, value in inputs.as_kwargs().items()}
        config = SamplerConfig(**sampler_options)
        blocks = sum(
            len({position // config.block_length for position in spec.generated_positions()}) for spec in specs
        )
        progress = self.progress_bar(total=max(1, blocks // len(specs)) * config.num_inference_steps)

        def on_step(step_index: int, block_index: int, sequences: torch.Tensor) -> None:
            progress.update(1)
            if callback_on_step_end is not None:
                callback_on_step_end(self, step_index, block_index, self._callback_kwargs(stage, specs, sequences))

        with self._running("backbone", self.backbone), progress:
            output = self.make_sampler()(**kwargs, generator=generator, callback_on_step_end=on_step, config=config)
        sampling: SamplingStats = output.stats
        stats.add(stage, sampling.nfe, sampling.wall_time_s, sampling.as_dict())
        return unpad_rows(output.sequences, specs)

    def _callback_kwargs(self, stage: str, specs: list[SequenceSpec], sequences: torch.Tensor) -> dict[str, Any]:
        layout = self.token_layout
        grids = []
        for row, spec in enumerate(specs):
            for slot in spec.image_slots:
                ids = sequences[row, slot.start : slot.end].detach().cpu()
                is_code = (ids >= layout.image_token_offset) & (ids < layout.image_token_offset + layout.codebook_size)
                grids.append(torch.where(is_code, ids - layout.image_token_offset, -1).view(slot.h, slot.w))

        def preview(output_type: str = "pil") -> list[Any]:
            if not grids or self.decoder is None:
                return []
            filled = [grid.clamp_min(0) for grid in grids]
            return split_image_batch(self.decoder.preview(filled, output_type=output_type).images)

        return {"stage": stage, "sequences": sequences, "token_grids": grids, "preview": preview}

    def decoder_for(self, variant: str) -> SemanticImageDecoder:
        """The loaded decoder of ``variant``; loads it from the source checkpoint on first use, sharing the
        current decoder's SigVQ module and VAE where the saved ones hold the same weights (a checkpoint whose
        decoders were trained apart keeps each its own). Raises ``ValueError`` when it cannot be had."""
        if variant in self._decoders:
            return self._decoders[variant]
        if variant not in ("turbo", "normal"):
            raise ValueError(f"decoder={variant!r} is unknown; allowed values are 'turbo' and 'normal'")
        if self._source is None or self.decoder is None:
            raise ValueError(
                f"decoder={variant!r} is not loaded (loaded: {sorted(self._decoders)}) and this pipeline was not "
                "loaded from a checkpoint directory that holds it"
            )
        root, layout = self._source
        loaded = load_decoder(root, layout, variant, self.decoder.dtype if layout == OFFICIAL_LAYOUT else None)
        device = self.decoder.device
        shared = SemanticImageDecoder(
            sigvq=_shared_if_same(self.decoder.sigvq, loaded.sigvq, device),
            transformer=loaded.transformer.to(device),
            vae=_shared_if_same(self.decoder.vae, loaded.vae, device),
            scheduler=loaded.scheduler,
            decoder_variant=variant,
            draft_strength=loaded.config.draft_strength,
        )
        self._decoders[variant] = shared
        return shared

    def decode_grids(
        self,
        grids: list[torch.Tensor],
        decoder_options: dict[str, Any],
        generator: Any,
        output_type: str,
        stats: StageStats,
        references: list[list[tuple[torch.Tensor | int, torch.Tensor]]] | None = None,
    ) -> list[Any]:
        """Decode (h, w) code grids to images of ``output_type`` ("tokens" returns the grids themselves).

        decoder_options: ``decoder`` variant, ``decoder_steps``, ``decoder_guidance_scale``,
        ``resolution_multiplier``, ``copy_unchanged_patches`` and ``unchanged_patch_tolerance``. generator:
        None, one generator or one per grid. references: used with ``copy_unchanged_patches``: per grid, its
        references as (pixels, codes) pairs in priority order (`unchanged_patches.copy_unchanged_patches`),
        pixels (3, H, W) in [0, 1] or the index of an earlier grid of this call, whose final image is then
        the reference (an interleaved step keeps what its previous image kept). Returns one image per grid.
        """
        if output_type == "tokens" or not grids:
            return [grid.clone() for grid in grids]
        if self.decoder is None:
            raise ValueError("output_type: this pipeline has no decoder; use output_type='tokens'")
        decoder = self.decoder_for(decoder_options.get("decoder", "turbo"))
        copy_unchanged = decoder_options.get("copy_unchanged_patches", False)
        if not isinstance(copy_unchanged, bool):
            raise ValueError(f"copy_unchanged_patches={copy_unchanged!r} must be True or False")
        tolerance = check_tolerance(decoder_options.get("unchanged_patch_tolerance", DEFAULT_TOLERANCE))
        copy_unchanged = copy_unchanged and references is not None
        started = time.perf_counter()
        with self._running("decoder", decoder):
            images = decoder(
                grids,
                num_inference_steps=decoder_options.get("decoder_steps"),
                guidance_scale=decoder_options.get("decoder_guidance_scale"),
                generator=generator,
                resolution_multiplier=decoder_options.get("resolution_multiplier", 2),
                output_type="pt" if copy_unchanged else output_type,
            ).images
        if copy_unchanged:
            if len(references) != len(grids):
                raise ValueError(f"references: got {len(references)} lists for {len(grids)} grids")
            kept: list[torch.Tensor] = []
            for image, grid, pairs in zip(split_image_batch(images), grids, references):
                pairs = [(kept[pixels] if isinstance(pixels, int) else pixels, codes) for pixels, codes in pairs]
                kept.append(copy_unchanged_patches(image.float().cpu(), grid, pairs, tolerance)[0])
            images = SemanticImageDecoder.format_images(kept, output_type)
        steps = decoder_options.get("decoder_steps") or decoder.defaults[0]
        guidance = decoder_options.get("decoder_guidance_scale")
        guided = (decoder.defaults[1] if guidance is None else guidance) > 0
        passes = decoder.transformer_steps(steps)
        details = {"variant": decoder.config.decoder_variant, "images": len(grids), "steps": steps,
                   "transformer_steps": passes}
        stats.add("decoder", passes * (2 if guided else 1), time.perf_counter() - started, details)
        return split_image_batch(images)

    def decode_text(self, ids: list[int]) -> str:
        """Text of ``ids`` (special tokens skipped)."""
        return self.text_tokenizer.decode(ids, skip_special_tokens=True)
