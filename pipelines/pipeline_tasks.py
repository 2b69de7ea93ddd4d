"""Task pipelines: understanding, chat, text-to-image (with a thinking mode) and image editing.

Each is a `UniPipelineBase` whose ``__call__`` is its algorithm in order; build them from a loaded
pipeline with ``TaskPipeline.from_pipe(pipe)`` (same module objects) or through ``UniPipeline``'s
properties. Options not named in a signature (``**options``) are sampler and decoder options with the
sampler's names (``steps``, ``block_length``, ``threshold``, ``guidance_scale``, ``use_sprint``,
``keep_ratio``, ``decoder``, ``decoder_steps``, ...; see `generation_defaults`), defaulting to the
checkpoint's ``generation_defaults.json``. ``num_images_per_prompt`` is the number of samples per prompt
for every task (answers for the text tasks).

Two options trade compute for exactness: text-to-image's ``num_candidates`` draws that many images per
sample and keeps the one whose prompt the backbone reads back best (`candidate_ranking`), and editing's
``copy_unchanged_patches`` keeps the source's pixels where the edit left the codes unchanged
(`unchanged_patches`). Both are off in the official defaults.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from unimask.decoders.semantic_decoder import TOKEN_PIXELS, SemanticImageDecoder
from unimask.pipelines.call_inputs import (
    check_count,
    check_output_type,
    check_prompts,
    generators_for,
    images_per_prompt,
    split_image_batch,
)
from unimask.pipelines.candidate_ranking import (
    DEFAULT_RANKING_QUESTION,
    RANKING_FOLDS,
    check_ranking_options,
    rank_candidates,
    ranking_reads_codes,
    ranking_reads_pixels,
)
from unimask.pipelines.pipeline_base import StageStats, StepCallback, UniPipelineBase
from unimask.pipelines.pipeline_output import UniPipelineOutput
from unimask.pipelines.sequence_batching import generated_text_ids
from unimask.tokenizers.image_preprocessing import TOKEN_PIXELS as IMAGE_TOKEN_PIXELS
from unimask.tokenizers.sequence_builders import ChatMessage, SequenceSpec
from unimask.tokenizers.token_layout import TokenKind


def _repeat(items: list, times: int) -> list:
    return [item for item in items for _ in range(times)]


def _system_prompt(task_options: dict[str, Any]) -> dict[str, str]:
    prompt = task_options.get("system_prompt")
    return {} if prompt is None else {"system_prompt": prompt}


class _TaskPipeline(UniPipelineBase):
    """Shared helpers of the task pipelines."""

    def _slot_grids(self, sequence: torch.Tensor, spec: SequenceSpec) -> list[torch.Tensor]:
        offset = self.token_layout.image_token_offset
        return [(sequence[slot.start : slot.end] - offset).view(slot.h, slot.w).clone() for slot in spec.image_slots]

    def _target_grid(self, height: int | None, width: int | None, decoder_options: dict, default: Any) -> tuple[int, int]:
        """Token grid (h, w) of a generated image: from ``height``/``width`` in output pixels, else ``default``."""
        if height is None and width is None:
            return int(default[0]), int(default[1])
        multiplier = decoder_options.get("resolution_multiplier", 2)
        unit = TOKEN_PIXELS * multiplier
        sides = []
        for name, value, fallback in (("height", height, default[0]), ("width", width, default[1])):
            if value is None:
                sides.append(int(fallback))
                continue
            if not isinstance(value, int) or value < unit or value % unit:
                raise ValueError(
                    f"{name}={value!r} must be a positive multiple of 16 * resolution_multiplier = {unit} pixels"
                )
            sides.append(value // unit)
        return sides[0], sides[1]

    def _text_output(self, task, sequences, specs, stats, return_dict):
        texts = [self.decode_text(generated_text_ids(seq, spec, self.token_layout)) for seq, spec in zip(sequences, specs)]
        output = UniPipelineOutput(
            task=task,
            texts=texts,
            images=[[] for _ in texts],
            parts=[[text] for text in texts],
            token_ids=sequences,
            stats=stats.as_dict(),
        )
        return output if return_dict else (texts,)


class UnderstandingPipeline(_TaskPipeline):
    """Answer a question about one or more images."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        gen_length: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        return_dict: bool = True,
        **options: Any,
    ) -> UniPipelineOutput | tuple:
        """prompt: question(s); image: per prompt one image or a list (see `call_inputs.images_per_prompt`).
        gen_length: answer length in tokens (default from the checkpoint); output_type is checked but unused
        (text output). Returns texts (one per sample)."""
        check_output_type(output_type)
        prompts = check_prompts(prompt)
        images = images_per_prompt(image, len(prompts))
        if any(not group for group in images):
            raise ValueError("image: understanding needs at least one image per prompt")
        count = check_count(num_images_per_prompt, "num_images_per_prompt")
        sampler_options, _, task_options = self.generation_defaults.options_for(
            "understanding", {**options, "gen_length": gen_length}
        )
        stats = StageStats()
        grids = self.encode_images(images, task_options["image_size"])
        builder = self.sequence_builder()
        specs = [
            self.build_sequences(
                lambda g=g, q=q: builder.understanding(g, q, task_options["gen_length"], **_system_prompt(task_options)),
                "image",
            )
            for g, q in zip(grids, prompts)
        ]
        specs = _repeat(specs, count)
        generator = generators_for(generator, len(specs))
        sequences = self.sample(specs, sampler_options, "none", generator, "text", stats, callback_on_step_end)
        return self._text_output("understanding", sequences, specs, stats, return_dict)


def _as_chat_messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content', 'images'} dicts")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ValueError(f"messages[{index}] must be a dict with role 'user' or 'assistant', got {message!r}")
        if not isinstance(message.get("content", ""), str):
            raise ValueError(f"messages[{index}]['content'] must be a string")
    return list(messages)


class ChatPipeline(_TaskPipeline):
    """Multi-turn text chat (messages may carry images)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        messages: list[dict] | list[list[dict]] | None = None,
        gen_length: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        return_dict: bool = True,
        **options: Any,
    ) -> UniPipelineOutput | tuple:
        """prompt: one user message per conversation; or messages: a conversation (list of
        ``{"role": "user"|"assistant", "content": str, "images": [...]}``) or a list of conversations.
        Returns the assistant replies as texts (output_type is checked but unused)."""
        check_output_type(output_type)
        if messages is None:
            conversations = [[{"role": "user", "content": text}] for text in check_prompts(prompt)]
        else:
            if prompt is not None:
                raise ValueError("prompt: give either prompt or messages, not both")
            batch = messages if messages and isinstance(messages[0], (list, tuple)) else [messages]
            conversations = [_as_chat_messages(conversation) for conversation in batch]
        count = check_count(num_images_per_prompt, "num_images_per_prompt")
        sampler_options, _, task_options = self.generation_defaults.options_for(
            "chat", {**options, "gen_length": gen_length}
        )
        stats = StageStats()
        images = [[image for m in conv for image in images_per_prompt(m.get("images"), 1)[0]] for conv in conversations]
        grids = self.encode_images(images, task_options["image_size"])
        builder = self.sequence_builder()
        specs = []
        for conversation, conversation_grids in zip(conversations, grids):
            chat, used = [], 0
            for message in conversation:
                n_images = len(images_per_prompt(message.get("images"), 1)[0])
                chat.append(
                    ChatMessage(message["role"], message.get("content", ""), tuple(conversation_grids[used : used + n_images]))
                )
                used += n_images
            specs.append(
                self.build_sequences(
                    lambda c=chat: builder.chat(c, task_options["gen_length"], **_system_prompt(task_options)), "messages"
                )
            )
        specs = _repeat(specs, count)
        generator = generators_for(generator, len(specs))
        sequences = self.sample(specs, sampler_options, "none", generator, "text", stats, callback_on_step_end)
        return self._text_output("chat", sequences, specs, stats, return_dict)


class TextToImagePipeline(_TaskPipeline):
    """Prompt -> image, optionally thinking first (a reasoning text span, then the image conditioned on it)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        height: int | None = None,
        width: int | None = None,
        thinking: bool = False,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        return_dict: bool = True,
        **options: Any,
    ) -> UniPipelineOutput | tuple:
        """height / width: output pixels (multiples of 16 * resolution_multiplier; default from the
        checkpoint's ``image_grid``). thinking: generate ``thinking_length`` reasoning tokens first.
        ``num_candidates`` > 1 (an option): the first image is drawn as without it, the others at
        ``candidate_temperature``, and the one the backbone scores best is kept (stats stage
        ``candidate_ranking``: the scores and the chosen index per sample). ``ranking_source`` "pixels" or
        "codes_and_pixels" decodes every candidate (with the turbo decoder) and reads its pixels through the
        image tokenizer too; with the turbo decoder the kept image is the one decoded for the ranking.
        Returns one image per sample (and the thinking text in ``texts`` when thinking)."""
        prompts = check_prompts(prompt)
        count = check_count(num_images_per_prompt, "num_images_per_prompt")
        check_output_type(output_type)
        task = "thinking" if thinking else "text_to_image"
        sampler_options, decoder_options, task_options = self.generation_defaults.options_for(task, options)
        h, w = self._target_grid(height, width, decoder_options, task_options["image_grid"])
        guided = sampler_options.get("guidance_scale", 1.0) > 0
        stats = StageStats()
        builder = self.sequence_builder()
        if thinking:
            specs = [
                self.build_sequences(
                    lambda p=p: builder.thinking_text_to_image(
                        p, h, w, task_options["thinking_length"], cfg=guided, **_system_prompt(task_options)
                    ),
                    "thinking_length",
                )
                for p in prompts
            ]
        else:
            specs = [
                self.build_sequences(
                    lambda p=p: builder.text_to_image(p, h, w, cfg=guided, **_system_prompt(task_options)), "height"
                )
                for p in prompts
            ]
        specs = _repeat(specs, count)
        generator = generators_for(generator, len(specs))
        texts: list[str | None] = [None] * len(specs)
        if thinking:
            specs, texts = self._think(specs, sampler_options, task_options, generator, stats, callback_on_step_end)
        guidance = "simple" if guided else "none"
        sequences = self.sample(specs, sampler_options, guidance, generator, "image_tokens", stats, callback_on_step_end)
        decoded = None
        if task_options.get("num_candidates", 1) != 1:
            sequences, decoded = self._best_candidates(
                specs, sequences, _repeat(prompts, count), sampler_options, decoder_options, task_options, guidance,
                generator, stats, callback_on_step_end,
            )
        grids = [self._slot_grids(seq, spec)[0] for seq, spec in zip(sequences, specs)]
        if decoded is None or output_type == "tokens":
            images = self.decode_grids(grids, decoder_options, generator, output_type, stats)
        else:
            images = split_image_batch(SemanticImageDecoder.format_images(decoded, output_type))
        output = UniPipelineOutput(
            task=task,
            texts=texts,
            images=[[image] for image in images],
            parts=[([text] if text else []) + [image] for text, image in zip(texts, images)],
            token_ids=sequences,
            stats=stats.as_dict(),
        )
        return output if return_dict else (images,)

    def _best_candidates(self, specs, first, prompts, sampler_options, decoder_options, task_options, guidance,
                         generator, stats, callback):
        """Draw ``num_candidates - 1`` more images per sample at ``candidate_temperature`` and keep, per sample,
        the candidate (``first`` included) whose prompt the backbone reads back best (`candidate_ranking`) from
        what ``ranking_source`` names. Returns the kept sequences and, when the ranking decoded the candidates
        with the call's decoder, the kept images as (3, H, W) tensors in [0, 1] (else None)."""
        count = task_options["num_candidates"]
        temperature = task_options.get("candidate_temperature", 1.0)
        source = task_options.get("ranking_source", "codes")
        check_ranking_options(count, temperature, source)
        extra = count - 1
        more_generators = _repeat(generator, extra) if isinstance(generator, list) else generator
        more = self.sample(
            _repeat(specs, extra), {**sampler_options, "temperature": float(temperature)}, guidance, more_generators,
            "image_tokens", stats, callback,
        )
        candidates = [[sequence] + more[row * extra : (row + 1) * extra] for row, sequence in enumerate(first)]
        grids = [self._slot_grids(seq, spec)[0] for spec, group in zip(specs, candidates) for seq in group]
        decoded, reading_options = None, None
        if ranking_reads_pixels(source):
            if self.decoder is None or self.image_tokenizer is None:
                raise ValueError(
                    f"ranking_source={source!r} decodes candidates and reads their pixels, which needs a decoder and "
                    "an image tokenizer; use ranking_source='codes'"
                )
            reading_options = self._ranking_decoder_options(decoder_options)
            candidate_generators = _repeat(generator, count) if isinstance(generator, list) else generator
            decoded = [
                image.float().cpu()
                for image in self.decode_grids(grids, reading_options, candidate_generators, "pt", stats)
            ]
        started = time.perf_counter()
        read = [grids] if ranking_reads_codes(source) else []
        if decoded is not None:
            # Every candidate of a call has the call's (h, w) grid: re-encode at that many tokens.
            read += self.encode_images([decoded], [side * IMAGE_TOKEN_PIXELS for side in grids[0].shape])
        answer_sampler, _, answer_task = self.generation_defaults.options_for("understanding", {})
        scores = torch.zeros(len(grids))
        with self._running("backbone", self.backbone):
            for read_grids in read:
                scores += rank_candidates(
                    self.backbone,
                    self.sequence_builder(),
                    read_grids,
                    [prompt for prompt in prompts for _ in range(count)],
                    task_options.get("ranking_question") or DEFAULT_RANKING_QUESTION,
                    answer_task["gen_length"],
                    answer_sampler["block_length"],
                )
        scores = scores.view(len(specs), count)
        best = scores.argmax(dim=1).tolist()
        stats.add("candidate_ranking", RANKING_FOLDS * len(read), time.perf_counter() - started,
                  {"num_candidates": count, "ranking_source": source, "chosen": best, "scores": scores.tolist()})
        kept = [group[index] for group, index in zip(candidates, best)]
        if decoded is None or reading_options is not decoder_options:
            return kept, None
        return kept, [decoded[row * count + index] for row, index in enumerate(best)]

    def _ranking_decoder_options(self, decoder_options: dict[str, Any]) -> dict[str, Any]:
        """Decoder options for reading candidates' pixels: the call's when it draws with the turbo decoder, else the
        turbo decoder with its own defaults (eight normal decodes with guidance would cost more than the sampling);
        the call's decoder when no turbo decoder can be loaded."""
        if decoder_options.get("decoder", "turbo") == "turbo":
            return decoder_options
        try:
            self.decoder_for("turbo")
        except ValueError:
            return decoder_options
        variant_settings = ("decoder", "decoder_steps", "decoder_guidance_scale")
        return {**{k: v for k, v in decoder_options.items() if k not in variant_settings}, "decoder": "turbo"}

    def _think(self, specs, sampler_options, task_options, generator, stats, callback):
        """Generate the thinking spans (no guidance), then return image specs conditioned on them.

        A span with no readable text before its end-of-sequence (nothing, or only special ids: the text
        vocabulary keeps the image markers and size tokens) is dropped with its ``<think>`` ``</think>`` markers,
        so the image is conditioned as without thinking: a model that writes no thought (the Shapes World model
        was never trained to think, and often writes an image header there) would otherwise draw after a run of
        ids it never saw there."""
        heads = []
        for spec in specs:
            header_start = spec.image_slots[0].start - 4  # <|image|> h w <boi>
            heads.append(SequenceSpec(spec.input_ids[:header_start], spec.token_kinds[:header_start]))
        thinking_options = {**sampler_options, "num_inference_steps": task_options["thinking_steps"]}
        thought = self.sample(heads, thinking_options, "none", generator, "thinking", stats, callback)
        image_specs, texts = [], []
        for spec, head, filled in zip(specs, heads, thought):
            text = self.decode_text(generated_text_ids(filled, head, self.token_layout))
            written = bool(text.strip())
            texts.append(text if written else "")
            cut = len(head)
            kept = filled.tolist()
            if not written:
                kept = kept[: head.generated_positions()[0] - 1]  # up to <think>
            shift = len(kept) - cut
            image_specs.append(
                SequenceSpec(
                    kept + spec.input_ids[cut:],
                    [int(TokenKind.PROMPT)] * len(kept) + spec.token_kinds[cut:],
                    [dataclasses.replace(slot, start=slot.start + shift) for slot in spec.image_slots],
                    uncond=spec.uncond,
                )
            )
        return image_specs, texts


def _text_guidance_from_guidance_scale(options: dict[str, Any]) -> dict[str, Any]:
    """Editing's call options with ``guidance_scale`` moved to ``text_guidance_scale`` (editing's sampler reads
    only the text and image scales, so a ``guidance_scale`` left in place would be overwritten unseen)."""
    if "guidance_scale" not in options:
        return options
    options = dict(options)
    scale = options.pop("guidance_scale")
    if "text_guidance_scale" in options and options["text_guidance_scale"] != scale:
        raise ValueError(
            f"guidance_scale={scale!r} and text_guidance_scale={options['text_guidance_scale']!r}: editing takes "
            "guidance_scale as its text guidance scale; pass one of them"
        )
    options["text_guidance_scale"] = scale
    return options


class ImageEditPipeline(_TaskPipeline):
    """Edit one image, or compose several references, by an instruction (three-way guidance)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        return_dict: bool = True,
        **options: Any,
    ) -> UniPipelineOutput | tuple:
        """prompt: instruction(s); image: per prompt one image or a list of references. The target grid is
        the first reference's unless height/width are given. Guidance: ``text_guidance_scale`` and
        ``image_guidance_scale`` (three-way when the image scale is > 0, simple no-text CFG otherwise);
        ``guidance_scale`` names the text scale, as in diffusers' instruction-editing pipelines. With
        ``copy_unchanged_patches`` the output keeps the references' pixels (the last reference first) where
        its codes equal theirs and the decoded pixels are within ``unchanged_patch_tolerance``."""
        options = _text_guidance_from_guidance_scale(options)
        prompts = check_prompts(prompt)
        images = images_per_prompt(image, len(prompts))
        if any(not group for group in images):
            raise ValueError("image: editing needs at least one image per prompt")
        count = check_count(num_images_per_prompt, "num_images_per_prompt")
        check_output_type(output_type)
        sampler_options, decoder_options, task_options = self.generation_defaults.options_for("edit", options)
        text_scale = sampler_options.get("text_guidance_scale", 3.0)
        image_scale = sampler_options.get("image_guidance_scale", 0.0)
        guidance = "three_way" if image_scale > 0 else "simple" if text_scale > 0 else "none"
        if guidance == "simple":
            # cond + t * (cond - no_text) is simple CFG against the no-text branch (saves a forward pass).
            sampler_options = {**sampler_options, "guidance_scale": text_scale}
        stats = StageStats()
        grids = self.encode_images(images, task_options["image_size"])
        builder = self.sequence_builder()
        specs = []
        for source, instruction in zip(grids, prompts):
            h, w = self._target_grid(height, width, decoder_options, tuple(source[0].shape))
            specs.append(
                self.build_sequences(
                    lambda s=source, i=instruction, h=h, w=w: builder.edit(
                        s, i, h, w, cfg=guidance != "none", **_system_prompt(task_options)
                    ),
                    "image",
                )
            )
        specs = _repeat(specs, count)
        generator = generators_for(generator, len(specs))
        sequences = self.sample(specs, sampler_options, guidance, generator, "image_tokens", stats, callback_on_step_end)
        out_grids = [self._slot_grids(seq, spec)[0] for seq, spec in zip(sequences, specs)]
        references = None
        if decoder_options.get("copy_unchanged_patches") and output_type != "tokens":
            # The last reference is the image being edited (multi-reference: the base the others add to).
            pixels = self.reference_pixels(images, task_options["image_size"])
            references = _repeat([list(zip(p, g))[::-1] for p, g in zip(pixels, grids)], count)
        images_out = self.decode_grids(out_grids, decoder_options, generator, output_type, stats, references)
        output = UniPipelineOutput(
            task="edit",
            texts=[None] * len(images_out),
            images=[[image] for image in images_out],
            parts=[[image] for image in images_out],
            token_ids=sequences,
            stats=stats.as_dict(),
        )
        return output if return_dict else (images_out,)
