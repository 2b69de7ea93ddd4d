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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from unimask.pipelines.call_inputs import check_count, check_output_type, check_prompts, generators_for
from unimask.pipelines.pipeline_base import StageStats, StepCallback, UniPipelineBase
from unimask.pipelines.pipeline_output import UniPipelineOutput
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
        the checkpoint). Returns ``parts`` (ordered str / image per sample), ``texts`` (text parts joined)
        and ``images``."""
        prompts = check_prompts(prompt)
        count = check_count(num_images_per_prompt, "num_images_per_prompt")
        check_output_type(output_type)
        sampler_options, decoder_options, task_options = self.generation_defaults.options_for(
            "interleaved", {**options, "gen_length": gen_length, "max_images": max_images}
        )
        length, limit = task_options["gen_length"], task_options["max_images"]
        check_count(length, "gen_length")
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
            for kind in ("text", "image"):
                group = [s for s in active if s.kind == kind]
                if not group:
                    continue
                group_generator = [s.generator for s in group] if isinstance(generators, list) else generators
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
                        self._after_text(sample, sequence, builder, limit, max_length, guided, stats)
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

    def _after_text(self, sample, sequence, builder, limit, max_length, guided, stats) -> None:
        """Look for an image opening in the text just generated; set up the image round or finish."""
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

    def _after_image(self, sample, sequence, length, max_length) -> None:
        """The image is generated: open the next text round, or finish at the context limit."""
        ids = sequence.tolist()
        if len(ids) + length > max_length:
            self._finish(sample, ids, "context_limit")
            return
        sample.spec = SequenceSpec(
            ids + [self.token_layout.mask_id] * length,
            [int(TokenKind.PROMPT)] * len(ids) + [int(TokenKind.TEXT)] * length,
        )
        sample.kind = "text"
