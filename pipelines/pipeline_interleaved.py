"""Interleaved text and image output: the backbone decides when to open an image.

Rounds alternate, batched over the samples still running:

- text round: ``gen_length`` masked TEXT positions after the sequence so far, sampled without guidance.
  If the generated text (before its first end-of-sequence) holds ``<|image|>``, the image header is read
  from the three tokens after it (``<|reserved_token_h|> <|reserved_token_w|> <boi>``); when they are not
  a valid header the two size tokens are sampled as SIZE positions (a small extra call; a size of 0 or a
  grid that would not fit the context falls back to the default ``image_grid``) and ``<boi>`` is appended.
  Text after the header is dropped (it is regenerated once the image exists). No ``<|image|>`` -> the
  sample is finished.
- image round: the prefix ending in the header is continued by ``h * w`` IMAGE masks and ``<|/image|>``
  (`SequenceBuilder.continue_after_image_open`), sampled with simple CFG when ``guidance_scale`` > 0.

A sample stops at end-of-sequence, at ``max_images`` opened images (the last unfinished header is cut),
or when the next round would exceed the model's context. The result is parsed into the ordered list of
text and images; every image grid is decoded in one decoder call at the end (with ``copy_unchanged_patches``
each image keeps its previous image's pixels where its codes did not change; `unchanged_patches`).

With the option ``step_images="tasks"`` an opened image is not an image round of the interleaved sequence:
it is drawn by the text-to-image task (the sample's first image) or the edit task (later images, the
previous image as the source) from its step's sentence, the text the round wrote before ``<|image|>``, so
that a step image gets what those tasks do (best-of-N ranking, unchanged patches kept, their guidance and
defaults). ``step_prompt_patterns`` ([first, later] regular expressions) cut the task prompt out of the
sentence: group 1 of the first match, the whole sentence when the pattern does not match. The drawn image,
as the image tokenizer reads it, then goes into the sequence under the header, and the next text round
continues after it. A step whose prompt is blank ends the sample (stop reason ``no_step_text``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.pipelines.call_inputs import (
    check_count,
    check_output_type,
    check_prompts,
    generators_for,
    split_image_batch,
)
from unimask.pipelines.generation_defaults import DECODER_OPTIONS
from unimask.pipelines.pipeline_base import StageStats, StepCallback, UniPipelineBase
from unimask.pipelines.pipeline_output import UniPipelineOutput
from unimask.pipelines.pipeline_tasks import ImageEditPipeline, TextToImagePipeline
from unimask.tokenizers.sequence_builders import ImageGrid, SequenceSpec
from unimask.tokenizers.sequence_parser import MalformedImageBlock, TextSpan, parse_sequence
from unimask.tokenizers.token_layout import TokenKind


@dataclass
class _Sample:
    """One sample's state across rounds."""

    spec: SequenceSpec
    prompt_length: int
    generator: torch.Generator | None
    kind: str = "text"  # the next round: "text" or "image"
    images_opened: int = 0
    done: bool = False
    sequence: list[int] = field(default_factory=list)
    stop_reason: str = ""
    # step_images="tasks": the pending step's sentence and header, and the images drawn so far ((3, H, W) in [0, 1])
    step_sentence: str = ""
    header: list[int] = field(default_factory=list)
    step_images: list[torch.Tensor] = field(default_factory=list)


STEP_IMAGE_MODES = ("in_context", "tasks")


def check_step_prompt_patterns(patterns: Any) -> list[re.Pattern] | None:
    """None, or two regular expressions (the first step's, the later steps') -> compiled patterns; anything
    else raises ``ValueError`` naming ``step_prompt_patterns``."""
    if patterns is None:
        return None
    if not isinstance(patterns, (list, tuple)) or len(patterns) != 2 or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"step_prompt_patterns={patterns!r} must be two regular expressions: [first step, later steps]"
        )
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"step_prompt_patterns: {pattern!r} is not a regular expression: {error}") from error
    return compiled


def step_prompt(sentence: str, pattern: re.Pattern | None) -> str:
    """The task prompt of a step's sentence: group 1 (or the whole match) of ``pattern``'s first match,
    else the sentence itself; surrounding whitespace removed."""
    sentence = sentence.strip()
    match = pattern.search(sentence) if pattern is not None else None
    if match is None:
        return sentence
    return (match.group(1) if match.re.groups else match.group(0)).strip()


class InterleavedPipeline(UniPipelineBase):
    """Prompt -> an ordered mix of text and images chosen by the model."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        gen_length: int | None = None,
        max_images: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        callback_on_step_end: StepCallback | None = None,
        return_dict: bool = True,
        **options: Any,
    ) -> UniPipelineOutput | tuple:
        """gen_length: TEXT positions per text round; max_images: most images per sample (defaults from
        the checkpoint). Options ``step_images`` ("in_context" | "tasks") and ``step_prompt_patterns`` choose how
        step images are drawn (module docstring); with "tasks" the call's decoder options reach the task calls.
        Returns ``parts`` (ordered str / image per sample), ``texts`` (text parts joined) and ``images``."""
        prompts = check_prompts(prompt)
        count = check_count(num_images_per_prompt, "num_images_per_prompt")
        check_output_type(output_type)
        sampler_options, decoder_options, task_options = self.generation_defaults.options_for(
            "interleaved", {**options, "gen_length": gen_length, "max_images": max_images}
        )
        length, limit = task_options["gen_length"], task_options["max_images"]
        check_count(length, "gen_length")
        mode = task_options.get("step_images", "in_context")
        if mode not in STEP_IMAGE_MODES:
            raise ValueError(f"step_images={mode!r} is unknown; allowed values are {list(STEP_IMAGE_MODES)}")
        patterns = check_step_prompt_patterns(task_options.get("step_prompt_patterns"))
        by_task = mode == "tasks"
        if by_task and (self.decoder is None or self.image_tokenizer is None):
            raise ValueError("step_images='tasks' draws and re-reads every step image: it needs a decoder and an "
                             "image tokenizer; use step_images='in_context'")
        step_options = {k: v for k, v in options.items() if k in DECODER_OPTIONS and v is not None}
        guided = sampler_options.get("guidance_scale", 1.0) > 0
        stats = StageStats()
        builder = self.sequence_builder()
        max_length = self.backbone.config.max_position_embeddings
        generators = generators_for(generator, len(prompts) * count)
        samples = []
        for index, text in enumerate(prompts):
            spec = self.build_sequences(lambda t=text: builder.interleaved(t, length), "prompt")
            for copy in range(count):
                row = index * count + copy
                row_generator = generators[row] if isinstance(generators, list) else generators
                samples.append(_Sample(spec, len(spec) - length, row_generator))

        while True:
            active = [s for s in samples if not s.done]
            if not active:
                break
            for kind in ("text", "image", "step_image"):
                group = [s for s in active if s.kind == kind]
                if not group:
                    continue
                group_generator = [s.generator for s in group] if isinstance(generators, list) else generators
                if kind == "step_image":
                    self._draw_step_images(group, group_generator, patterns, step_options, task_options,
                                           length, max_length, stats, callback_on_step_end)
                    continue
                sequences = self.sample(
                    [s.spec for s in group],
                    sampler_options,
                    "simple" if kind == "image" and guided else "none",
                    group_generator,
                    f"{kind}_round",
                    stats,
                    callback_on_step_end,
                )
                for sample, sequence in zip(group, sequences):
                    if kind == "text":
                        self._after_text(sample, sequence, builder, limit, max_length, guided, stats, by_task)
                    else:
                        self._after_image(sample, sequence, length, max_length)

        parts_per_sample, grids, owners, references = [], [], [], []
        for row, sample in enumerate(samples):
            parts = parse_sequence(sample.sequence[sample.prompt_length :], self.token_layout)
            parts_per_sample.append(parts)
            previous = None
            for part in parts:
                if isinstance(part, ImageGrid):
                    # Each image after the first edits the one before it: that one is its reference.
                    references.append([] if previous is None else [(previous, grids[previous])])
                    previous = len(grids)
                    grids.append(torch.from_numpy(part.codes))
                    owners.append(row)
        if by_task and output_type != "tokens":
            drawn = [image for sample in samples for image in sample.step_images]
            decoded = iter(split_image_batch(SemanticImageDecoder.format_images(drawn, output_type)) if drawn else [])
        else:
            grid_generators = [samples[o].generator for o in owners] if isinstance(generators, list) else generators
            decoded = iter(self.decode_grids(grids, decoder_options, grid_generators, output_type, stats, references))
        all_parts, all_images, texts, malformed = [], [], [], 0
        for parts in parts_per_sample:
            ordered, images = [], []
            for part in parts:
                if isinstance(part, TextSpan):
                    text = self.decode_text(list(part.ids))
                    if text:
                        ordered.append(text)
                elif isinstance(part, MalformedImageBlock):
                    malformed += 1
                else:
                    image = next(decoded)
                    ordered.append(image)
                    images.append(image)
            all_parts.append(ordered)
            all_images.append(images)
            texts.append("".join(p for p in ordered if isinstance(p, str)))
        result = stats.as_dict()
        result["stop_reasons"] = [sample.stop_reason for sample in samples]
        result["malformed_image_blocks"] = malformed
        output = UniPipelineOutput(
            task="interleaved",
            texts=texts,
            images=all_images,
            parts=all_parts,
            token_ids=[torch.tensor(sample.sequence, dtype=torch.long) for sample in samples],
            stats=result,
        )
        return output if return_dict else (all_parts,)

    # ------------------------------------------------------------------ round transitions

    def _finish(self, sample: _Sample, sequence: list[int], reason: str) -> None:
        sample.sequence, sample.done, sample.stop_reason = sequence, True, reason

    def _after_text(self, sample, sequence, builder, limit, max_length, guided, stats, by_task) -> None:
        """Look for an image opening in the text just generated; set up the image round (``by_task``: the
        step image drawn by a task) or finish."""
        layout = self.token_layout
        ids = sequence.tolist()
        text_positions = [p for p, k in enumerate(sample.spec.token_kinds) if k == TokenKind.TEXT]
        opening = None
        for position in text_positions:
            if ids[position] == layout.eos_id:
                break
            if ids[position] == layout.image_start_id:
                opening = position
                break
        if opening is None:
            self._finish(sample, ids, "end_of_sequence" if layout.eos_id in ids[sample.prompt_length :] else "no_image")
            return
        if sample.images_opened >= limit:
            self._finish(sample, ids[:opening] + [layout.eos_id], "max_images")
            return
        prefix = self._image_header(ids, opening, sample.generator, stats)
        h, w = layout.token_to_size(prefix[-3]), layout.token_to_size(prefix[-2])
        if len(prefix) + h * w + 1 > max_length:
            self._finish(sample, ids[:opening] + [layout.eos_id], "context_limit")
            return
        if by_task:
            start = text_positions[0]
            sample.step_sentence = self.decode_text(ids[start:opening])
            sample.header = prefix
            sample.kind = "step_image"
        else:
            sample.spec = builder.continue_after_image_open(prefix, text_length=0, cfg=guided)
            sample.kind = "image"
        sample.images_opened += 1

    def _image_header(self, ids: list[int], opening: int, generator, stats: StageStats) -> list[int]:
        """``ids[:opening + 1]`` plus a valid ``h w <boi>`` header: the generated one, or sizes sampled anew."""
        layout = self.token_layout
        header = ids[opening + 1 : opening + 4]
        sizes = [layout.token_to_size(token) for token in header[:2]]
        if len(header) == 3 and header[2] == layout.boi_id and self._grid_allowed(sizes, opening + 4):
            return ids[: opening + 4]
        head = ids[: opening + 1]
        spec = SequenceSpec(
            head + [layout.mask_id, layout.mask_id, layout.boi_id],
            [int(TokenKind.PROMPT)] * len(head) + [int(TokenKind.SIZE)] * 2 + [int(TokenKind.PROMPT)],
        )
        options = {"block_length": 2, "num_inference_steps": 2, "threshold": 1.0}
        filled = self.sample([spec], options, "none", generator, "size_tokens", stats)[0].tolist()
        default = self.generation_defaults.options_for("interleaved", {})[2]["image_grid"]
        sizes = [layout.token_to_size(token) for token in filled[len(head) : len(head) + 2]]
        if not self._grid_allowed(sizes, len(filled)):
            # A sampled size of 0, a grid too large for the context or for the decoder: the default grid.
            filled[len(head)], filled[len(head) + 1] = layout.size_token(int(default[0])), layout.size_token(int(default[1]))
        return filled

    def _grid_allowed(self, sizes: list[int | None], header_end: int) -> bool:
        """Whether an (h, w) header read from generated tokens can be generated and decoded: both sides
        >= 1, the grid fits the context after ``header_end`` tokens, and the decoder reaches that far."""
        if len(sizes) != 2 or any(size is None or size < 1 for size in sizes):
            return False
        h, w = sizes
        if header_end + h * w + 1 > self.backbone.config.max_position_embeddings:
            return False
        limit = self.decoder.max_grid_side if self.decoder is not None else None
        return limit is None or max(h, w) <= limit

    def _draw_step_images(self, group, generator, patterns, step_options, task_options, length, max_length,
                          stats, callback) -> None:
        """Draw each sample's pending step image with the text-to-image task (its first image; one call per
        header grid) or the edit task (later ones, its previous image the source), put the drawn image's codes
        under its header and open the next text round (`_after_image`)."""
        layout = self.token_layout
        per_sample = isinstance(generator, list)
        batches: dict[tuple, list[int]] = {}
        prompts: dict[int, str] = {}
        for i, sample in enumerate(group):
            first = not sample.step_images
            pattern = None if patterns is None else patterns[0 if first else 1]
            prompts[i] = step_prompt(sample.step_sentence, pattern)
            if not prompts[i]:
                self._finish(sample, sample.header[:-4] + [layout.eos_id], "no_step_text")
                continue
            key = ("text_to_image", *sample.header[-3:-1]) if first else ("edit",)
            batches.setdefault(key, []).append(i)
        for key, rows in batches.items():
            samples = [group[i] for i in rows]
            options = {
                "generator": [generator[i] for i in rows] if per_sample else generator,
                "output_type": "pt",
                "callback_on_step_end": callback,
                **step_options,
            }
            if key[0] == "text_to_image":
                grid = [layout.token_to_size(token) for token in key[1:]]
                output = self.sibling(TextToImagePipeline)([prompts[i] for i in rows], image_grid=grid, **options)
            else:
                sources = [sample.step_images[-1] for sample in samples]
                output = self.sibling(ImageEditPipeline)([prompts[i] for i in rows], sources, **options)
            stats.add(f"step_{key[0]}", sum(output.stats["nfe"].values()), output.stats["total_time_s"],
                      output.stats["stages"])
            images = [drawn[0].float().cpu() for drawn in output.images]
            codes = self.encode_images([[image] for image in images], task_options["image_size"])
            for sample, image, (grid,) in zip(samples, images, codes):
                h, w = grid.shape
                header = sample.header[:-3] + [layout.size_token(h), layout.size_token(w), layout.boi_id]
                block = (grid.flatten() + layout.image_token_offset).tolist() + [layout.image_end_id]
                sample.step_images.append(image)
                self._after_image(sample, header + block, length, max_length)

    def _after_image(self, sample, sequence, length, max_length) -> None:
        """The image is generated: open the next text round, or finish at the context limit."""
        ids = sequence.tolist() if isinstance(sequence, torch.Tensor) else list(sequence)
        if len(ids) + length > max_length:
            self._finish(sample, ids, "context_limit")
            return
        sample.spec = SequenceSpec(
            ids + [self.token_layout.mask_id] * length,
            [int(TokenKind.PROMPT)] * len(ids) + [int(TokenKind.TEXT)] * length,
        )
        sample.kind = "text"
