"""Best-of-N text-to-image: the pseudo-likelihood score and the pipeline's choice among candidates."""

from __future__ import annotations

import pytest
import torch

import unimask.pipelines.pipeline_tasks as pipeline_tasks
from unimask.pipelines.candidate_ranking import answer_ids, answer_pseudo_log_likelihood, rank_candidates
from unimask.tokenizers.token_layout import TokenKind


def _spec_and_answer(pipe, prompt="a red circle", length=6):
    builder = pipe.sequence_builder()
    answer = answer_ids(builder, prompt, length)
    spec = builder.understanding([torch.tensor([[1, 2], [3, 4]])], "describe the image.", len(answer))
    return builder, spec, answer


@torch.no_grad()
def _masked_log_probs(pipe, spec, answer, masked):
    """Brute force: the answer filled in, ``masked`` answer indices masked, full attention; log p of the truth."""
    layout = pipe.token_layout
    ids = torch.tensor(spec.input_ids)
    positions = spec.generated_positions()
    ids[positions] = torch.tensor(answer)
    ids[[positions[i] for i in masked]] = layout.mask_id
    length = len(ids)
    logits = pipe.backbone(ids[None], attention_mask=torch.ones(1, 1, length, length, dtype=torch.bool),
                           position_ids=torch.arange(length)[None]).logits[0].float()
    logits = logits.masked_fill(~layout.vocab_mask(TokenKind.TEXT), float("-inf")).log_softmax(-1)
    return sum(float(logits[positions[i], answer[i]]) for i in masked)


def test_answer_is_padded_with_end_of_sequence(pipe):
    builder = pipe.sequence_builder()
    ids = answer_ids(builder, "a red circle", 12)
    assert len(ids) == 12 and ids[-1] == pipe.token_layout.eos_id
    assert len(answer_ids(builder, "a red circle", 1)) == len(ids) - ids.count(pipe.token_layout.eos_id) + 1


@pytest.mark.parametrize("folds", [1, 2, 6])
def test_pseudo_log_likelihood_matches_brute_force(pipe, folds):
    _, spec, answer = _spec_and_answer(pipe)
    score = answer_pseudo_log_likelihood(pipe.backbone, pipe.token_layout, [spec, spec], [answer, answer],
                                         block_length=1024, folds=folds)
    expected = sum(_masked_log_probs(pipe, spec, answer, list(range(fold, len(answer), folds))) for fold in range(folds))
    assert score.shape == (2,) and score[0] == pytest.approx(expected, abs=1e-4) and score[1] == pytest.approx(score[0])


def test_pseudo_log_likelihood_checks_its_inputs(pipe):
    _, spec, answer = _spec_and_answer(pipe)
    with pytest.raises(ValueError, match="folds"):
        answer_pseudo_log_likelihood(pipe.backbone, pipe.token_layout, [spec], [answer], 1024, folds=0)
    with pytest.raises(ValueError, match="answer 0 has"):
        answer_pseudo_log_likelihood(pipe.backbone, pipe.token_layout, [spec], [answer[:-1]], 1024)
    with pytest.raises(ValueError, match="one prompt per grid"):
        rank_candidates(pipe.backbone, pipe.sequence_builder(), [torch.zeros(2, 2, dtype=torch.long)], [], "q", 4, 8)


def test_pipeline_keeps_the_best_scored_candidate(pipe, monkeypatch):
    seen = {}

    def scripted_scores(backbone, builder, grids, prompts, question, answer_length, block_length, folds=4):
        seen.update(grids=[grid.clone() for grid in grids], prompts=list(prompts), question=question)
        # sample 0 prefers its third candidate, sample 1 its first
        return torch.tensor([0.0, 1.0, 2.0, 5.0, 1.0, 0.0])

    monkeypatch.setattr(pipeline_tasks, "rank_candidates", scripted_scores)
    generators = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]
    out = pipe.text_to_image(["a red circle", "a blue square"], generator=generators, num_candidates=3,
                             output_type="tokens")
    assert seen["prompts"] == ["a red circle"] * 3 + ["a blue square"] * 3
    assert seen["question"] == "describe the image."
    assert torch.equal(out.images[0][0], seen["grids"][2]) and torch.equal(out.images[1][0], seen["grids"][3])
    ranking = out.stats["stages"]["candidate_ranking"]
    assert ranking["chosen"] == [2, 0] and ranking["num_candidates"] == 3
    # the first candidate is the plain call's image: same seeds, same sampler options
    plain = pipe.text_to_image(["a red circle", "a blue square"], output_type="tokens",
                               generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)])
    assert torch.equal(plain.images[0][0], seen["grids"][0]) and torch.equal(plain.images[1][0], seen["grids"][3])
    assert "candidate_ranking" not in plain.stats["stages"]
    # the other candidates are one more batched sampler call
    assert out.stats["nfe"]["image_tokens"] > plain.stats["nfe"]["image_tokens"]


def test_pipeline_ranks_with_the_real_score(pipe):
    out = pipe.text_to_image("a red circle", num_candidates=2, ranking_question="what is it?", output_type="pil",
                             generator=torch.Generator().manual_seed(0))
    ranking = out.stats["stages"]["candidate_ranking"]
    scores = torch.tensor(ranking["scores"])
    assert scores.shape == (1, 2) and (scores < 0).all()
    assert ranking["chosen"] == [int(scores.argmax())]


@pytest.mark.parametrize("options, name", [({"num_candidates": 0}, "num_candidates"),
                                           ({"num_candidates": 2.5}, "num_candidates"),
                                           ({"num_candidates": 2, "candidate_temperature": -1.0}, "candidate_temperature")])
def test_bad_ranking_options_are_value_errors(pipe, options, name):
    with pytest.raises(ValueError, match=name):
        pipe.text_to_image("a red circle", output_type="tokens", **options)
