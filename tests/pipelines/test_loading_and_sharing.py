"""Shared modules, save/load round trip, official-layout loading, offload bookkeeping."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from unimask.pipelines import (
    ChatPipeline,
    GenerationDefaults,
    ImageEditPipeline,
    InterleavedPipeline,
    TextToImagePipeline,
    UnderstandingPipeline,
    UniPipeline,
)
from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.pipelines.checkpoint_loading import detect_layout
from unimask.tokenizers.token_layout import IMAGE_START_TOKEN, ROLE_HUMAN, size_token_string


def _storage(module):
    return {name: p.untyped_storage().data_ptr() for name, p in module.named_parameters()}


def test_task_pipelines_share_module_storage(pipe):
    backbone_storage = _storage(pipe.backbone)
    decoder_storage = _storage(pipe.decoder.transformer)
    tasks = [
        pipe.text_to_image, pipe.understanding, pipe.edit, pipe.interleaved, pipe.chat,
        TextToImagePipeline.from_pipe(pipe), ImageEditPipeline.from_pipe(pipe), UnderstandingPipeline.from_pipe(pipe),
        InterleavedPipeline.from_pipe(pipe), ChatPipeline.from_pipe(pipe),
    ]
    for task in tasks:
        assert task.backbone is pipe.backbone and task.decoder is pipe.decoder
        assert task.image_tokenizer is pipe.image_tokenizer and task.text_tokenizer is pipe.text_tokenizer
        assert _storage(task.backbone) == backbone_storage
        assert _storage(task.decoder.transformer) == decoder_storage
    assert isinstance(pipe.text_to_image, TextToImagePipeline) and pipe.text_to_image is pipe.text_to_image


def test_sibling_pipelines_follow_the_parent_settings(pipe):
    parent = UniPipeline.from_pipe(pipe)
    parent.set_progress_bar_config(disable=True)
    step_pipeline = parent.interleaved.sibling(TextToImagePipeline)  # as interleaved "tasks" steps get it
    assert step_pipeline is parent.interleaved.sibling(TextToImagePipeline)
    assert step_pipeline.backbone is pipe.backbone and step_pipeline._decoders is parent._decoders
    parent.set_progress_bar_config(disable=False, leave=False)
    assert parent.text_to_image._progress_bar_config == {"disable": False, "leave": False}
    assert parent.interleaved.sibling(TextToImagePipeline)._progress_bar_config == {"disable": False, "leave": False}
    parent.generation_defaults = parent.generation_defaults.updated({"edit": {"num_inference_steps": 3}})
    assert parent.edit.generation_defaults is parent.generation_defaults


def test_tiny_official_layout_is_detected_and_resolved(pipe, tiny_root):
    assert detect_layout(tiny_root) == "official"
    layout = pipe.token_layout
    tokenizer = pipe.text_tokenizer
    assert layout.image_start_id == tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN)
    assert layout.role_human_ids == (tokenizer.convert_tokens_to_ids(ROLE_HUMAN),)
    assert layout.size_token(3) == tokenizer.convert_tokens_to_ids(size_token_string(3))
    assert layout.image_token_offset == pipe.backbone.config.image_token_offset
    assert layout.vocab_size == pipe.backbone.config.vocab_size


def test_save_load_round_trip_gives_identical_outputs(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert {"backbone", "text_tokenizer", "image_tokenizer", "decoder"} <= set(index)
    assert detect_layout(tmp_path / "saved") == "unimask"
    loaded = UniPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.token_layout == pipe.token_layout
    assert loaded.generation_defaults.tasks == pipe.generation_defaults.tasks
    for call in (
        lambda p: p.text_to_image("a circle", output_type="np", generator=torch.Generator().manual_seed(0)),
        lambda p: p.chat("hello"),
    ):
        before, after = call(pipe), call(loaded)
        assert torch.equal(before.token_ids[0], after.token_ids[0])
        if before.images[0]:
            # weights are bit-identical; the decoder's float arithmetic may differ in the last bits
            assert abs(before.images[0][0] - after.images[0][0]).max() < 1e-4


def test_normal_decoder_loads_lazily_and_shares_vae(pipe, tiny_root):
    local = UniPipeline.from_pretrained(tiny_root)
    local.set_progress_bar_config(disable=True)
    out = local.text_to_image("a circle", decoder="normal", decoder_steps=2, output_type="pt")
    assert out.stats["stages"]["decoder"]["variant"] == "normal"
    normal = local.decoder_for("normal")
    assert normal.vae is local.decoder.vae and normal.sigvq is local.decoder.sigvq
    assert normal.transformer is not local.decoder.transformer


def test_a_normal_decoder_with_its_own_draft_keeps_it_when_loaded(tiny_root, tmp_path):
    # Decoders trained apart (the shipped turbo one has its own draft network) must not be given the loaded
    # decoder's SigVQ; the identical VAE is still shared.
    local = UniPipeline.from_pretrained(tiny_root)
    normal = local.decoder_for("normal")
    own_sigvq = copy.deepcopy(normal.sigvq)
    with torch.no_grad():
        for parameter in own_sigvq.parameters():
            parameter.add_(0.5)
    local._decoders["normal"] = SemanticImageDecoder(sigvq=own_sigvq, transformer=normal.transformer, vae=normal.vae,
                                                     scheduler=normal.scheduler, decoder_variant="normal")
    local.save_pretrained(tmp_path / "saved")
    loaded = UniPipeline.from_pretrained(tmp_path / "saved")
    reloaded = loaded.decoder_for("normal")
    assert reloaded.sigvq is not loaded.decoder.sigvq and reloaded.vae is loaded.decoder.vae
    for name, tensor in own_sigvq.state_dict().items():
        assert torch.equal(reloaded.sigvq.state_dict()[name], tensor), name


def test_unknown_directory_raises(tmp_path):
    with pytest.raises(ValueError, match="path="):
        UniPipeline.from_pretrained(tmp_path)


def test_model_cpu_offload_moves_each_model_only_while_it_runs(pipe):
    offloaded = UniPipeline.from_pipe(pipe)
    reference = pipe.text_to_image("a circle", output_type="np", generator=torch.Generator().manual_seed(0))
    offloaded.enable_model_cpu_offload(device="cpu")
    result = offloaded.text_to_image("a circle", output_type="np", generator=torch.Generator().manual_seed(0))
    assert offloaded.offload_history == ["backbone:on", "backbone:off", "decoder:on", "decoder:off"]
    assert (reference.images[0][0] == result.images[0][0]).all()


def test_generation_defaults_merge_and_validate(tmp_path):
    defaults = GenerationDefaults({"common": {"steps": 3}, "edit": {"num_inference_steps": 5}})
    sampler, decoder, task = defaults.options_for("edit", {"threshold": 0.5})
    assert sampler["num_inference_steps"] == 5 and sampler["threshold"] == 0.5
    assert defaults.options_for("chat", {})[0]["num_inference_steps"] == 3
    assert decoder["decoder"] == "turbo" and task["image_size"] == "understanding"
    defaults.save_pretrained(tmp_path)
    assert GenerationDefaults.from_pretrained(tmp_path).tasks == defaults.tasks
    with pytest.raises(ValueError, match="unknown options"):
        GenerationDefaults({"common": {"stepz": 1}})
    with pytest.raises(ValueError, match="section"):
        GenerationDefaults({"painting": {}})
    with pytest.raises(ValueError, match="threshold"):
        defaults.options_for("chat", {"threshold": 2.0})


def test_to_dtype_casts_every_model(tiny_root):
    local = UniPipeline.from_pretrained(tiny_root, torch_dtype=torch.bfloat16)
    local.set_progress_bar_config(disable=True)
    assert local.backbone.dtype == torch.bfloat16 and local.decoder.transformer.dtype == torch.bfloat16
    local.to(dtype=torch.float32)
    assert local.backbone.dtype == torch.float32 and local.decoder.vae.dtype == torch.float32
    assert next(local.image_tokenizer.parameters()).dtype == torch.float32
    assert isinstance(local.chat("hello").texts[0], str)
