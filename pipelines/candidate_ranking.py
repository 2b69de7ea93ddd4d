"""Best-of-N text-to-image: rank candidate images by how well the backbone reads the prompt back from them.

The backbone that writes an image's codes also answers questions about codes, so it can check its own
drafts: each candidate's code grid goes into an understanding sequence with a question (the checkpoint's
``ranking_question``, "describe the image." by default) and the prompt as the answer, padded with
end-of-sequence tokens to the understanding answer length as answers are trained. The candidate's score is
the backbone's pseudo-log-likelihood of that answer: the answer positions are split into ``folds``
interleaved groups, each group is masked in one forward pass while the rest of the answer stays given, and
the log-probabilities of the true tokens at the masked positions are summed. With every answer position
masked at once (``folds`` = 1) the score is a product of independent marginals, which cannot see that the
words of one object phrase must agree; four folds rank better on the default model (model card,
"Best-of-N text-to-image").

What is read back is set by ``ranking_source``: ``"codes"`` reads the candidate's generated code grid;
``"pixels"`` decodes every candidate and reads the grid the image tokenizer gives its pixels, which also
sees what the decoder drew wrong; ``"codes_and_pixels"`` adds the two scores.
"""

from __future__ import annotations

from typing import Sequence

import torch

from unimask.tokenizers.sequence_builders import SequenceBuilder, SequenceSpec
from unimask.tokenizers.token_layout import TokenKind, TokenLayout, encode_plain
from unimask.unimodal.attention_masks import padded_block_causal_mask

RANKING_FOLDS = 4
DEFAULT_RANKING_QUESTION = "describe the image."
RANKING_SOURCES = ("codes", "pixels", "codes_and_pixels")


def ranking_reads_codes(source: str) -> bool:
    """Whether ``ranking_source`` scores the generated code grids."""
    return source in ("codes", "codes_and_pixels")


def ranking_reads_pixels(source: str) -> bool:
    """Whether ``ranking_source`` decodes the candidates and scores their re-encoded pixels."""
    return source in ("pixels", "codes_and_pixels")


def check_ranking_options(num_candidates: int, candidate_temperature: float, ranking_source: str = "codes") -> None:
    """Raise ``ValueError`` naming the option when ``num_candidates`` is not an int >= 1,
    ``candidate_temperature`` is not a number >= 0 or ``ranking_source`` is not one of `RANKING_SOURCES`."""
    if not isinstance(num_candidates, int) or isinstance(num_candidates, bool) or num_candidates < 1:
        raise ValueError(f"num_candidates={num_candidates!r} must be an int >= 1 (1 turns ranking off)")
    if isinstance(candidate_temperature, bool) or not isinstance(candidate_temperature, (int, float)) or (
        candidate_temperature < 0
    ):
        raise ValueError(f"candidate_temperature={candidate_temperature!r} must be a number >= 0")
    if ranking_source not in RANKING_SOURCES:
        raise ValueError(f"ranking_source={ranking_source!r} must be one of {list(RANKING_SOURCES)}")


def answer_ids(builder: SequenceBuilder, text: str, answer_length: int) -> list[int]:
    """``text`` encoded without special tokens and padded with end-of-sequence ids to ``answer_length``
    (or to its own length plus one end-of-sequence id when it is longer)."""
    ids = encode_plain(builder.tokenizer, text)
    length = max(answer_length, len(ids) + 1)
    return ids + [builder.layout.eos_id] * (length - len(ids))


@torch.no_grad()
def answer_pseudo_log_likelihood(
    backbone: torch.nn.Module,
    layout: TokenLayout,
    specs: Sequence[SequenceSpec],
    answers: Sequence[Sequence[int]],
    block_length: int,
    folds: int = RANKING_FOLDS,
) -> torch.Tensor:
    """Pseudo-log-likelihood of each answer in its understanding sequence.

    specs: sequences whose generated positions (TEXT kind, in order) hold the answer; answers: the ids to
    score there, one list per spec with as many ids as the spec has generated positions. block_length:
    the attention block of the sampler (block-causal between blocks, as sampling sees it). folds: >= 1
    forward passes, each masking every ``folds``-th answer position. Returns (len(specs),) float32 on the CPU.
    """
    if not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds={folds!r} must be an int >= 1")
    if len(specs) != len(answers):
        raise ValueError(f"got {len(specs)} sequences and {len(answers)} answers; give one answer per sequence")
    positions = [spec.generated_positions() for spec in specs]
    for row, (where, answer) in enumerate(zip(positions, answers)):
        if len(where) != len(answer):
            raise ValueError(f"answer {row} has {len(answer)} ids for {len(where)} answer positions")
    device = next(backbone.parameters()).device
    rows, length = len(specs), max(len(spec) for spec in specs)
    filled = torch.full((rows, length), layout.pad_id, dtype=torch.long)
    valid = torch.zeros((rows, length), dtype=torch.bool)
    for row, (spec, where, answer) in enumerate(zip(specs, positions, answers)):
        filled[row, : len(spec)] = torch.tensor(spec.input_ids, dtype=torch.long)
        filled[row, where] = torch.tensor(list(answer), dtype=torch.long)
        valid[row, : len(spec)] = True
    allowed = padded_block_causal_mask(valid, block_length)
    position_ids = torch.arange(length).expand(rows, length)
    disallowed = ~layout.vocab_mask(TokenKind.TEXT).to(device)
    scores = torch.zeros(rows, dtype=torch.float32)
    for fold in range(folds):
        ids = filled.clone()
        chosen = [where[fold::folds] for where in positions]
        for row, where in enumerate(chosen):
            ids[row, where] = layout.mask_id
        logits = backbone(
            ids.to(device), attention_mask=allowed.to(device), position_ids=position_ids.to(device)
        ).logits
        for row, where in enumerate(chosen):
            if not where:
                continue
            log_probs = logits[row, where].float().masked_fill(disallowed, float("-inf")).log_softmax(-1)
            targets = filled[row, where].to(device)
            scores[row] += log_probs.gather(-1, targets[:, None]).sum().cpu()
    return scores


def rank_candidates(
    backbone: torch.nn.Module,
    builder: SequenceBuilder,
    grids: Sequence[torch.Tensor],
    prompts: Sequence[str],
    question: str,
    answer_length: int,
    block_length: int,
    folds: int = RANKING_FOLDS,
) -> torch.Tensor:
    """Score each candidate grid by the backbone's pseudo-log-likelihood of its prompt as the answer to
    ``question`` about it (higher is better).

    grids: (h, w) code grids; prompts: the prompt each grid was drawn for (same length). answer_length:
    the understanding answer length the model was trained with. Returns (len(grids),) float32.
    """
    if len(grids) != len(prompts):
        raise ValueError(f"got {len(grids)} grids and {len(prompts)} prompts; give one prompt per grid")
    specs, answers = [], []
    for grid, prompt in zip(grids, prompts):
        answer = answer_ids(builder, prompt, answer_length)
        specs.append(builder.understanding([grid], question, len(answer)))
        answers.append(answer)
    return answer_pseudo_log_likelihood(backbone, builder.layout, specs, answers, block_length, folds)


__all__ = [
    "DEFAULT_RANKING_QUESTION",
    "RANKING_FOLDS",
    "RANKING_SOURCES",
    "answer_ids",
    "answer_pseudo_log_likelihood",
    "check_ranking_options",
    "rank_candidates",
    "ranking_reads_codes",
    "ranking_reads_pixels",
]
