"""Can a fresh backbone learn where a named object is from its image codes? A learnability probe.

The backbone recipe scores only a few thousand answers of each question kind in an hour's run (see
``docs/model-card.md``, "Backbone"); this probe asks whether the architecture can learn one kind, the
object's cell, when it is given many. Each example is one sequence

    <boi> h*w image codes <|/image|> question filler, colour id, shape id, <mask>

and the backbone's logits at the mask position, restricted to 9 answer ids, are trained with
cross-entropy to name the 3 x 3 cell (``scene.CELLS``) of the object of that colour and shape. The
grids come from a trained image tokenizer on rendered scenes, or are synthetic (one background code
and a 2 x 2 block of an object code). Positions are the plain 0..L-1 of the backbone, as in training.

Run: ``python -m unimask.shapes.location_probe [--tokenizer DIR] [--num-objects 3] [--steps 500]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import torch

from unimask.shapes.scene import CANVAS_SIZE, CELLS, COLOURS, GRID_SIZE, SHAPES, sample_scene

__all__ = ["ProbeExamples", "build_sequences", "run_location_probe", "scene_examples", "synthetic_examples"]

# Text ids of the probe's fixed layout (a fresh model gives them no meaning beyond this probe).
MASK_ID, BOI_ID, EOI_ID = 1, 2, 3
FILLER_IDS = tuple(range(16, 26))
COLOUR_BASE, SHAPE_BASE, ANSWER_BASE = 32, 40, 48
CODE_GRID = 8  # image codes a side
BATCH_SIZE = 64


@dataclasses.dataclass
class ProbeExamples:
    """Code grids and what is asked about them.

    Attributes:
        grids: (N, CODE_GRID * CODE_GRID) int64 image codes (0-based, before the backbone's image offset).
        colours, shapes: (N,) int64 index of the asked object's colour in ``COLOURS`` / shape in ``SHAPES``.
        cells: (N,) int64 index of its cell in ``CELLS`` (the answer).
    """

    grids: torch.Tensor
    colours: torch.Tensor
    shapes: torch.Tensor
    cells: torch.Tensor

    def __len__(self) -> int:
        return len(self.cells)


def _cell_of_pixel(y: int, x: int) -> int:
    """Index in ``CELLS`` of the third of the canvas holding pixel (y, x), as the checker reads it."""
    return (y * GRID_SIZE // CANVAS_SIZE) * GRID_SIZE + x * GRID_SIZE // CANVAS_SIZE


def synthetic_examples(count: int, seed: int) -> ProbeExamples:
    """``count`` synthetic grids: background code 0-2, one 2 x 2 block of object code 3-8.

    The object's colour index is its code - 3, its shape index 0; its cell is the one holding the
    block's centre (the block spans 32 x 32 of the 128-pixel canvas).
    """
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    background = torch.randint(0, 3, (count,), generator=generator)
    colours = torch.randint(0, 6, (count,), generator=generator)
    corners = torch.randint(0, CODE_GRID - 1, (count, 2), generator=generator)
    grids = background[:, None, None].expand(count, CODE_GRID, CODE_GRID).clone()
    cells = torch.empty(count, dtype=torch.long)
    patch = CANVAS_SIZE // CODE_GRID
    for index, (row, col) in enumerate(corners.tolist()):
        grids[index, row:row + 2, col:col + 2] = 3 + colours[index]
        cells[index] = _cell_of_pixel((row + 1) * patch, (col + 1) * patch)
    return ProbeExamples(grids.reshape(count, -1), colours, torch.zeros(count, dtype=torch.long), cells)


def scene_examples(image_tokenizer, count: int, num_objects: int, seed: int, chunk: int = 256) -> ProbeExamples:
    """``count`` rendered training scenes coded by ``image_tokenizer``; the first object is asked about.

    Args:
        image_tokenizer: a ``SigLIPVQTokenizer`` whose grids are 8 x 8 at the ``shapes_world`` size.
        count: number of scenes; num_objects: objects per scene, 1 to 3; seed: scene sampler seed.
    """
    from unimask.shapes.render import render

    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    rng = random.Random(seed)
    scenes = [sample_scene(rng, num_objects=num_objects) for _ in range(count)]
    grids = []
    for start in range(0, count, chunk):
        grids += image_tokenizer.encode([render(s) for s in scenes[start:start + chunk]], "shapes_world").ids
    grids = torch.as_tensor(np.asarray(grids, dtype=np.int64).reshape(count, -1))
    if grids.shape[1] != CODE_GRID * CODE_GRID:
        raise ValueError(f"the tokenizer gives {grids.shape[1]} codes an image; the probe needs an {CODE_GRID} x {CODE_GRID} grid")
    colour_names, asked = list(COLOURS), [scene.objects[0] for scene in scenes]
    return ProbeExamples(
        grids,
        torch.tensor([colour_names.index(item.colour) for item in asked]),
        torch.tensor([SHAPES.index(item.shape) for item in asked]),
        torch.tensor([CELLS.index(item.cell) for item in asked]),
    )


def build_sequences(examples: ProbeExamples, image_token_offset: int) -> torch.Tensor:
    """(N, CODE_GRID * CODE_GRID + 15) int64 backbone inputs; the last position is the masked answer."""
    if image_token_offset <= ANSWER_BASE + len(CELLS):
        raise ValueError(f"image_token_offset={image_token_offset} must be > {ANSWER_BASE + len(CELLS)} (the probe's text ids)")
    count = len(examples)
    parts = [
        torch.full((count, 1), BOI_ID),
        examples.grids + image_token_offset,
        torch.full((count, 1), EOI_ID),
        torch.tensor(FILLER_IDS).expand(count, -1),
        (COLOUR_BASE + examples.colours)[:, None],
        (SHAPE_BASE + examples.shapes)[:, None],
        torch.full((count, 1), MASK_ID),
    ]
    return torch.cat(parts, dim=1).long()


def run_location_probe(
    model: torch.nn.Module,
    train: ProbeExamples,
    test: ProbeExamples,
    steps: int,
    batch_size: int = BATCH_SIZE,
    lr: float = 2e-3,
    eval_every: int = 100,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train ``model`` (an ``LLaDA2MoeModelLM``, in place) on ``train``; test accuracy along the way.

    Returns:
        ``[{"step": s, "accuracy": a}, ...]`` at step 0, every ``eval_every`` steps and at ``steps``:
        the fraction of ``test`` examples whose highest answer logit is the right cell.
    """
    if steps < 1 or batch_size < 1 or eval_every < 1:
        raise ValueError(f"steps={steps}, batch_size={batch_size} and eval_every={eval_every} must all be >= 1")
    offset = model.config.image_token_offset
    train_ids, test_ids = build_sequences(train, offset), build_sequences(test, offset)
    answer_ids = torch.arange(ANSWER_BASE, ANSWER_BASE + len(CELLS))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(test_ids[i:i + 256]).logits[:, -1, answer_ids] for i in range(0, len(test), 256)])
        model.train()
        return float((logits.argmax(-1) == test.cells).float().mean())

    history = []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, "accuracy": round(accuracy(), 4)})
        if step == steps:
            break
        batch = torch.randint(0, len(train), (batch_size,), generator=generator)
        logits = model(train_ids[batch]).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, answer_ids[train.cells[batch]])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return history


def main(argv: list[str] | None = None) -> dict:
    """Command line: build the examples, train a fresh backbone, print and return the JSON result."""
    parser = argparse.ArgumentParser(prog="python -m unimask.shapes.location_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="saved image tokenizer folder (default: synthetic grids)")
    parser.add_argument("--num-objects", type=int, default=1, help="objects per scene, 1 to 3 (with --tokenizer)")
    parser.add_argument("--backbone-config", default=str(Path(__file__).resolve().parents[1] / "default_model" / "backbone" / "config.json"),
                        help="config.json of the backbone architecture to probe (default: the shipped model's)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train-count", type=int, default=8192)
    parser.add_argument("--test-count", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.num_objects <= 3:
        parser.error(f"--num-objects={args.num_objects} must be 1, 2 or 3")
    from unimask.unimodal.configuration_llada2_moe import LLaDA2MoeConfig
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    if args.tokenizer:
        from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer

        tokenizer = SigLIPVQTokenizer.from_pretrained(args.tokenizer, size_policy="shapes_world")
        train = scene_examples(tokenizer, args.train_count, args.num_objects, seed=args.seed + 1)
        test = scene_examples(tokenizer, args.test_count, args.num_objects, seed=args.seed + 2)
    else:
        train, test = synthetic_examples(args.train_count, args.seed + 1), synthetic_examples(args.test_count, args.seed + 2)
    torch.manual_seed(args.seed)
    config = LLaDA2MoeConfig(**json.loads(Path(args.backbone_config).read_text()))
    history = run_location_probe(LLaDA2MoeModelLM(config), train, test, args.steps, seed=args.seed)
    result = {"grids": args.tokenizer or "synthetic", "num_objects": args.num_objects if args.tokenizer else 1,
              "steps": args.steps, "batch_size": BATCH_SIZE, "chance": round(1 / len(CELLS), 4), "history": history}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
