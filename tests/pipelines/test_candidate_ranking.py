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


def test_pixel_ranking_reads_the_decoded_candidates_and_returns_the_kept_one(pipe, monkeypatch):
    seen = []

    def scripted_scores(backbone, builder, grids, prompts, question, answer_length, block_length, folds=4):
        seen.append([grid.clone() for grid in grids])
        return torch.tensor([0.0, 3.0, 1.0])

    monkeypatch.setattr(pipeline_tasks, "rank_candidates", scripted_scores)
    out = pipe.text_to_image("a red circle", num_candidates=3, ranking_source="pixels", output_type="pt",
                             generator=torch.Generator().manual_seed(0))
    assert len(seen) == 1 and len(seen[0]) == 3
    kept = out.images[0][0]
    h, w = seen[0][1].shape
    # what the ranking read for the kept candidate is the tokenizer's reading of the image returned
    reread = pipe.image_tokenizer.encode([kept.float()], target_size=(h * 16, w * 16)).ids_list()[0]
    assert torch.equal(reread.cpu(), seen[0][1])
    ranking = out.stats["stages"]["candidate_ranking"]
    assert ranking["chosen"] == [1] and ranking["ranking_source"] == "pixels"
    assert out.stats["stages"]["decoder"]["images"] == 3  # every candidate decoded once, none again


def test_pixel_ranking_reads_turbo_pixels_when_the_normal_decoder_draws(pipe, monkeypatch):
    monkeypatch.setattr(pipeline_tasks, "rank_candidates", lambda *args, **kwargs: torch.tensor([0.0, 1.0]))
    out = pipe.text_to_image("a red circle", num_candidates=2, ranking_source="pixels", decoder="normal",
                             output_type="pil", generator=torch.Generator().manual_seed(0))
    ranking_decode, output_decode = out.stats["stages"]["decoder"]
    assert (ranking_decode["variant"], ranking_decode["images"]) == ("turbo", 2)
    assert (output_decode["variant"], output_decode["images"]) == ("normal", 1)
    assert len(out.images) == 1 and out.stats["stages"]["candidate_ranking"]["chosen"] == [1]


def test_codes_and_pixels_ranking_adds_the_two_scores(pipe, monkeypatch):
    calls = iter([torch.tensor([2.0, 0.0, 0.0, 0.0]), torch.tensor([-5.0, 1.0, 0.0, 1.0])])
    monkeypatch.setattr(pipeline_tasks, "rank_candidates", lambda *args, **kwargs: next(calls))
    out = pipe.text_to_image(["a red circle", "a blue square"], num_candidates=2, ranking_source="codes_and_pixels",
                             output_type="pil", generator=torch.Generator().manual_seed(0))
    ranking = out.stats["stages"]["candidate_ranking"]
    assert ranking["scores"] == [[-3.0, 1.0], [0.0, 1.0]] and ranking["chosen"] == [1, 1]
    assert out.stats["nfe"]["candidate_ranking"] == 8 and len(out.images) == 2 and out.images[1][0].size == out.images[0][0].size


def test_pixel_ranking_without_a_decoder_is_a_value_error(pipe):
    codes_only = pipeline_tasks.TextToImagePipeline.from_pipe(pipe, decoder=None)
    with pytest.raises(ValueError, match="ranking_source='codes_and_pixels'.*needs a decoder"):
        codes_only("a red circle", num_candidates=2, ranking_source="codes_and_pixels", output_type="tokens")
    out = codes_only("a red circle", num_candidates=2, output_type="tokens")
    assert out.stats["stages"]["candidate_ranking"]["ranking_source"] == "codes"


@pytest.mark.parametrize("options, name", [({"num_candidates": 0}, "num_candidates"),
                                           ({"num_candidates": 2, "ranking_source": "text"}, "ranking_source"),
                                           ({"num_candidates": 2.5}, "num_candidates"),
                                           ({"num_candidates": 2, "candidate_temperature": -1.0}, "candidate_temperature")])
def test_bad_ranking_options_are_value_errors(pipe, options, name):
    with pytest.raises(ValueError, match=name):
        pipe.text_to_image("a red circle", output_type="tokens", **options)
