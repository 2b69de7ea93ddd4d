"""Shapes World task samples + their image code grids -> backbone training sequences.

Each task becomes one prompt/response sequence built with
:class:`unimask.tokenizers.sequence_builders.SequenceBuilder`, exactly as the pipelines build it at
inference, with the masked region filled by the right answer:

- ``understanding``: the chat prompt with the image, then the answer padded with end-of-sequence to
  ``answer_length`` TEXT positions (the pipeline's ``gen_length``);
- ``text_to_image`` / ``editing`` / ``multi_reference_editing``: the target grid's codes in the image
  slot (then ``<|/image|>``); with probability ``uncondition_rate`` the text condition is replaced by
  ``<uncondition>`` (the unconditional branch classifier-free guidance needs);
- ``interleaved``: after the assistant tag, per step its sentence and its image block
  (``<|image|> h w <boi> codes <|/image|>``), then ``tail_eos`` end-of-sequence tokens (what a last
  text round sees).

:func:`interleaved_round_sequences` cuts an interleaved sample into the rounds
:class:`~unimask.pipelines.pipeline_interleaved.InterleavedPipeline` samples, each a sequence that ends
where its round ends: a text round (the history, then the step's sentence, its image header and
end-of-sequence up to ``text_length`` TEXT positions), an image round (the history, the sentence and
header, then the codes and ``<|/image|>``) and the last text round (the history, then ``text_length``
end-of-sequence tokens). Sequences attend within themselves only, so the whole-sample form teaches a
model that the response ends long after a text round's ``text_length`` positions; the round form shows
it the lengths it meets at inference.

``response_start`` is the first response position: the SFT loss masks only positions from there on
(the backbone stage's ``maskable`` region; text and image positions are told apart by id).
:func:`backbone_records` reads tokenized task shards (``codes.npy``) as backbone records whose json
holds ``input_ids`` and ``response_start``; :func:`interleave_evenly` mixes several such streams before
they are written (``unimask.shapes.build_default``'s ``backbone_data``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import webdataset as wds

from unimask.data.shard_format import SampleDecodeError, decode_record
from unimask.tokenizers.sequence_builders import SequenceBuilder, SequenceSpec, fill_masks
from unimask.tokenizers.token_layout import TokenLayout, encode_plain

__all__ = ["BackboneSequence", "backbone_sequence", "backbone_records", "interleaved_round_sequences",
           "interleaved_round_records", "interleave_evenly"]

logger = logging.getLogger(__name__)

BackboneSequence = tuple[list[int], int]


def _pad_answer(ids: list[int], length: int, eos_id: int, what: str) -> list[int]:
    if len(ids) + 1 > length:
        raise ValueError(f"{what} has {len(ids)} tokens; answer_length={length} must leave room for one end-of-sequence")
    return ids + [eos_id] * (length - len(ids))


def _image_block(layout: TokenLayout, grid: np.ndarray) -> list[int]:
    h, w = grid.shape
    codes = layout.image_code_to_token(np.asarray(grid, dtype=np.int64).reshape(-1)).tolist()
    return [layout.image_start_id, layout.size_token(h), layout.size_token(w), layout.boi_id, *codes, layout.image_end_id]


def _filled(spec: SequenceSpec, values: Sequence[int]) -> BackboneSequence:
    positions = spec.generated_positions()
    return fill_masks(spec, values), positions[0]


def backbone_sequence(
    sample: dict[str, Any],
    grids: np.ndarray,
    builder: SequenceBuilder,
    *,
    answer_length: int = 32,
    tail_eos: int = 48,
    uncondition_rate: float = 0.1,
    rng: random.Random | None = None,
) -> BackboneSequence:
    """One training sequence for a task sample (``sample_to_json`` form or Scene form: only text fields are read).

    Args:
        sample: a Shapes World task sample (``task`` and its text fields).
        grids: ``(n_images, h, w)`` int codes of the sample's scenes in ``sample_scenes`` order
            (input images, then the target or the step scenes).
        builder: the SequenceBuilder of the model's layout and text tokenizer.
        answer_length: TEXT positions of an understanding answer (answer + end-of-sequence padding).
        tail_eos: end-of-sequence tokens after the last interleaved image.
        uncondition_rate: probability of the unconditional prompt for image-generating tasks.
        rng: draws the unconditional choice (default: ``random.Random(0)``).
    Returns:
        ``(input_ids, response_start)``: a list of ids in the joint vocabulary and the index of the
        first response position.
    Raises:
        ValueError: unknown task, wrong number of grids, or an answer longer than ``answer_length - 1``.
    """
    rng = rng or random.Random(0)
    layout = builder.layout
    task = sample.get("task")
    grids = np.asarray(grids)
    expected = {"understanding": 1, "text_to_image": 1, "editing": 2, "multi_reference_editing": 3}
    if task == "interleaved":
        expected_count = len(sample["steps"])
    elif task in expected:
        expected_count = expected[task]
    else:
        raise ValueError(f"sample task={task!r} is not a Shapes World task")
    if grids.ndim != 3 or grids.shape[0] != expected_count:
        raise ValueError(f"task {task!r} needs grids of shape ({expected_count}, h, w), got {grids.shape}")
    h, w = int(grids.shape[1]), int(grids.shape[2])
    unconditional = rng.random() < uncondition_rate
    if task == "understanding":
        spec = builder.understanding([grids[0]], sample["question"], answer_length)
        answer = _pad_answer(encode_plain(builder.tokenizer, sample["answer"]), answer_length, layout.eos_id, "answer")
        return _filled(spec, answer)
    if task == "text_to_image":
        spec = builder.text_to_image(sample["prompt"], h, w, cfg=unconditional)
        return _filled(spec.uncond if unconditional else spec, layout.image_code_to_token(grids[-1].reshape(-1)).tolist())
    if task in ("editing", "multi_reference_editing"):
        spec = builder.edit(list(grids[:-1]), sample["instruction"], h, w, cfg=unconditional)
        return _filled(spec.uncond if unconditional else spec, layout.image_code_to_token(grids[-1].reshape(-1)).tolist())
    spec = builder.interleaved(sample["prompt"], text_length=1)
    prefix = spec.input_ids[:-1]
    response: list[int] = []
    for step, grid in zip(sample["steps"], grids):
        response += encode_plain(builder.tokenizer, step["text"]) + _image_block(layout, grid)
    response += [layout.eos_id] * tail_eos
    return prefix + response, len(prefix)


def interleaved_round_sequences(
    sample: dict[str, Any], grids: np.ndarray, builder: SequenceBuilder, text_length: int
) -> list[BackboneSequence]:
    """The rounds of an interleaved sample as separate training sequences (see the module docstring).

    Args:
        sample: an interleaved Shapes World sample (``prompt`` and ``steps``, each with ``text``).
        grids: ``(n_steps, h, w)`` int codes of the step scenes.
        builder: the SequenceBuilder of the model's layout and text tokenizer.
        text_length: TEXT positions of a text round (the pipeline's interleaved ``gen_length``).
    Returns:
        ``2 * n_steps + 1`` ``(input_ids, response_start)`` pairs: per step its text round and its image
        round, then the last text round.
    Raises:
        ValueError: not an interleaved sample, grids not ``(n_steps, h, w)``, or a sentence plus its image
        header longer than ``text_length``.
    """
    if sample.get("task") != "interleaved":
        raise ValueError(f"sample task={sample.get('task')!r}: round sequences are cut from interleaved samples")
    grids = np.asarray(grids)
    if grids.ndim != 3 or grids.shape[0] != len(sample["steps"]):
        raise ValueError(f"interleaved sample needs grids of shape ({len(sample['steps'])}, h, w), got {grids.shape}")
    layout = builder.layout
    history = builder.interleaved(sample["prompt"], text_length=1).input_ids[:-1]
    rounds: list[BackboneSequence] = []
    for step, grid in zip(sample["steps"], grids):
        block = _image_block(layout, grid)
        text = encode_plain(builder.tokenizer, step["text"]) + block[:4]
        if len(text) > text_length:
            raise ValueError(f"step text {step['text']!r} and its image header take {len(text)} tokens; "
                             f"text_length={text_length} is too short")
        rounds.append((history + text + [layout.eos_id] * (text_length - len(text)), len(history)))
        rounds.append((history + text + block[4:], len(history) + len(text)))
        history = history + text + block[4:]
    rounds.append((history + [layout.eos_id] * text_length, len(history)))
    return rounds


def _coded_records(shards: Sequence[str | Path]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(key, record)`` of every decodable record with codes in ``shards``; the key names the shard folder and
    shard too, as several shard folders may share shard names. Others are skipped with a warning."""
    for shard in shards:
        shard_path = Path(shard)
        for raw in wds.tariterators.tarfile_samples([{"url": str(shard)}]):
            try:
                record = decode_record(raw, decode_images=False)
            except SampleDecodeError as err:
                logger.warning("shard %s sample %s: %s; skipped", shard, raw.get("__key__"), err)
                continue
            if record["codes"] is None:
                logger.warning("shard %s sample %s has no codes.npy; skipped", shard, record["__key__"])
                continue
            yield f"{shard_path.parent.name}_{shard_path.stem}_{record['__key__']}".replace(".", "_"), record


def interleaved_round_records(
    shards: Sequence[str | Path], builder: SequenceBuilder, text_length: int
) -> Iterator[dict[str, Any]]:
    """Backbone records of every round of the interleaved samples in tokenized shards (``codes.npy``);
    other tasks are skipped. Records as :func:`backbone_records` writes them, keys ending ``_round<i>``."""
    for key, record in _coded_records(shards):
        if record["json"].get("task") != "interleaved":
            continue
        rounds = interleaved_round_sequences(record["json"], record["codes"], builder, text_length)
        for index, (ids, start) in enumerate(rounds):
            yield {"__key__": f"{key}_round{index}", "json": {"task": "interleaved", "input_ids": ids, "response_start": start}}


def backbone_records(
    shards: Sequence[str | Path], builder: SequenceBuilder, seed: int = 0, **options: Any
) -> Iterator[dict[str, Any]]:
    """Backbone shard samples from tokenized task shards (each record needs ``codes.npy``).

    Yields ``{"__key__", "json": {"task", "input_ids", "response_start"}}``; records without codes are
    skipped with a warning. ``options`` go to :func:`backbone_sequence`.
    """
    rng = random.Random(seed)
    for key, record in _coded_records(shards):
        ids, start = backbone_sequence(record["json"], record["codes"], builder, rng=rng, **options)
        yield {"__key__": key, "json": {"task": record["json"]["task"], "input_ids": ids, "response_start": start}}


T = TypeVar("T")


def interleave_evenly(sources: Sequence[tuple[Iterable[T], int]]) -> Iterator[T]:
    """Merge ``(iterable, expected_count)`` sources so each is spread evenly over the output.

    The next item always comes from the source furthest behind its share (items taken / expected
    count), so shards written from the result mix every source in every stretch instead of one source
    after another (a trainer reading a few shards at a time would otherwise see one task for hundreds of
    steps). A source that ends early is dropped; one that runs past its count continues after the rest.
    """
    if any(count < 1 for _, count in sources):
        raise ValueError(f"expected counts must be >= 1, got {[count for _, count in sources]}")
    live = [[iter(items), count, 0] for items, count in sources]
    while live:
        entry = min(live, key=lambda item: item[2] / item[1])
        try:
            value = next(entry[0])
        except StopIteration:
            live.remove(entry)
            continue
        entry[2] += 1
        yield value
