"""Checkpoints from strangers: missing files, bad configs, wrong shapes, truncated safetensors and
pickles where safetensors are expected (refused, never unpickled: the marker file must not appear).

Already covered elsewhere (see docs/robustness.md): missing / unexpected / mis-shaped image tokenizer
weights and a folder without config.json (tests/image_tokenizer/test_image_tokenizer.py); missing and
unexpected decoder weights (tests/decoder/test_checkpoint_loading.py); backbone missing experts and
mis-shaped keys (tests/unimodal/test_backbone_loading.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unimask.decoders.semantic_decoder import SemanticImageDecoder
from unimask.tokenizers.image_tokenizer import SigLIPVQTokenizer

TOKENIZER_WEIGHTS = "image_tokenizer.safetensors"
TURBO_WEIGHTS = "decoder-turbo/model.safetensors"


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_json(path: Path, change) -> None:
    values = json.loads(path.read_text())
    change(values)
    path.write_text(json.dumps(values))


# ---------------------------------------------------------------- image tokenizer


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_truncated_tokenizer_safetensors_raises_value_error(image_tokenizer_dir, checkpoint_copy, keep):
    folder = checkpoint_copy(image_tokenizer_dir)
    truncate(folder / TOKENIZER_WEIGHTS, keep)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SigLIPVQTokenizer.from_pretrained(folder)


def test_pickle_named_safetensors_is_refused_and_never_unpickled(image_tokenizer_dir, checkpoint_copy, evil_pickle):
    folder = checkpoint_copy(image_tokenizer_dir)
    payload, marker = evil_pickle()
    (folder / TOKENIZER_WEIGHTS).write_bytes(payload)
    with pytest.raises(ValueError, match="pickled weights are never loaded"):
        SigLIPVQTokenizer.from_pretrained(folder)
    assert not marker.exists()


def test_pickle_bin_instead_of_safetensors_is_ignored(image_tokenizer_dir, checkpoint_copy, evil_pickle):
    folder = checkpoint_copy(image_tokenizer_dir)
    payload, marker = evil_pickle()
    (folder / TOKENIZER_WEIGHTS).unlink()
    (folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(ValueError, match=r"no image_tokenizer.safetensors"):
        SigLIPVQTokenizer.from_pretrained(folder)
    assert not marker.exists()


def test_missing_folder_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        SigLIPVQTokenizer.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("config.json", "{not json", "not valid JSON"),
        ("config.json", "[1, 2]", "must hold a JSON object"),
        ("config.json", '{"vision_config": [], "vq_config": {}}', "'vision_config' must be an object"),
        ("preprocessor_config.json", '{"patch_size": "abc"}', "preprocessor_config.json is invalid"),
        ("preprocessor_config.json", '{"merge_size": 0}', "merge_size must be >= 1"),
        ("preprocessor_config.json", '{"image_std": [0, 1, 1]}', "std > 0"),
    ],
)
def test_broken_tokenizer_configs_raise_value_error_naming_the_file(image_tokenizer_dir, checkpoint_copy, file, content, message):
    folder = checkpoint_copy(image_tokenizer_dir)
    (folder / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        SigLIPVQTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("section, key, value", [("vision_config", "hidden_size", "32"), ("vq_config", "num_embeddings", [1])])
def test_wrong_typed_tokenizer_config_keys_raise_value_error(image_tokenizer_dir, checkpoint_copy, section, key, value):
    folder = checkpoint_copy(image_tokenizer_dir)
    edit_json(folder / "config.json", lambda config: config[section].__setitem__(key, value))
    with pytest.raises(ValueError, match=f"invalid vision_config or vq_config.*{key}"):
        SigLIPVQTokenizer.from_pretrained(folder)


def test_unknown_tokenizer_config_keys_are_ignored(image_tokenizer_dir, checkpoint_copy):
    # The official config.json carries Hugging Face bookkeeping keys the architecture does not use.
    folder = checkpoint_copy(image_tokenizer_dir)
    edit_json(folder / "config.json", lambda config: config["vision_config"].__setitem__("no_such_option", 3))
    reference = SigLIPVQTokenizer.from_pretrained(image_tokenizer_dir)
    loaded = SigLIPVQTokenizer.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))


# ---------------------------------------------------------------- image decoder


def test_truncated_decoder_weights_raise_value_error(decoder_root, checkpoint_copy):
    root = checkpoint_copy(decoder_root)
    truncate(root / TURBO_WEIGHTS)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        SemanticImageDecoder.from_pretrained(root, variant="turbo")


def test_truncated_vae_weights_raise_value_error(decoder_root, checkpoint_copy):
    root = checkpoint_copy(decoder_root)
    truncate(next((root / "vae").glob("*.safetensors")), keep=0.001)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        SemanticImageDecoder.from_pretrained(root)


@pytest.mark.parametrize("how", ["pickled object", "torch.save of an object"])
def test_pickled_sigvq_embedding_is_refused_and_never_unpickled(decoder_root, checkpoint_copy, evil_pickle, how):
    root = checkpoint_copy(decoder_root)
    payload, marker = evil_pickle()
    target = root / "image_tokenizer" / "sigvq_embedding.pt"
    if how == "pickled object":
        target.write_bytes(payload)
    else:
        torch.save({"w": _Unpicklable(marker)}, target)
    with pytest.raises(ValueError, match="weights_only=True"):
        SemanticImageDecoder.from_pretrained(root)
    assert not marker.exists()


class _Unpicklable:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch '{self.marker}'",))


def test_pickle_bin_decoder_weights_are_ignored(decoder_root, checkpoint_copy, evil_pickle):
    root = checkpoint_copy(decoder_root)
    payload, marker = evil_pickle()
    (root / TURBO_WEIGHTS).unlink()
    (root / "decoder-turbo" / "diffusion_pytorch_model.bin").write_bytes(payload)
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        SemanticImageDecoder.from_pretrained(root)
    assert not marker.exists()


@pytest.mark.parametrize(
    "remove, message",
    [("image_tokenizer/sigvq_embedding.pt", "sigvq_embedding.pt"), ("vae/config.json", "vae/config.json")],
)
def test_missing_decoder_files_are_named(decoder_root, checkpoint_copy, remove, message):
    root = checkpoint_copy(decoder_root)
    (root / remove).unlink()
    with pytest.raises(FileNotFoundError, match=message):
        SemanticImageDecoder.from_pretrained(root)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda config: config.__setitem__("dim", "64"), "config.json has invalid values"),
        (lambda config: config.__setitem__("n_layers", None), "config.json has invalid values"),
    ],
)
def test_wrong_typed_decoder_config_raises_value_error(decoder_root, checkpoint_copy, change, message):
    root = checkpoint_copy(decoder_root)
    edit_json(root / "decoder-turbo" / "config.json", change)
    with pytest.raises(ValueError, match=message):
        SemanticImageDecoder.from_pretrained(root)


def test_invalid_decoder_config_json_is_named(decoder_root, checkpoint_copy):
    root = checkpoint_copy(decoder_root)
    (root / "decoder-turbo" / "config.json").write_text("{")
    with pytest.raises(ValueError, match="decoder-turbo/config.json is not valid JSON"):
        SemanticImageDecoder.from_pretrained(root)


def test_decoder_weights_with_wrong_shapes_name_the_weight(decoder_root, checkpoint_copy):
    root = checkpoint_copy(decoder_root)
    state = load_file(str(root / TURBO_WEIGHTS))
    name = sorted(state)[0]
    state[name] = torch.zeros(*(side + 1 for side in state[name].shape))
    save_file(state, str(root / TURBO_WEIGHTS))
    with pytest.raises(ValueError, match=f"weight '{name}' has shape"):
        SemanticImageDecoder.from_pretrained(root)


def test_sharded_index_pointing_outside_its_folder_is_refused(decoder_root, checkpoint_copy, tmp_path):
    from unimask.decoders.official_checkpoint import read_folder_weights

    root = checkpoint_copy(decoder_root)
    folder = root / "decoder-turbo"
    (folder / "model.safetensors").rename(tmp_path / "outside.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../../outside.safetensors"}}))
    with pytest.raises(ValueError, match="outside its folder"):
        read_folder_weights(folder)


def test_unknown_decoder_config_keys_are_ignored_with_diffusers_warning(decoder_root, checkpoint_copy, caplog):
    root = checkpoint_copy(decoder_root)
    edit_json(root / "decoder-turbo" / "config.json", lambda config: config.__setitem__("no_such_option", 1))
    with caplog.at_level("WARNING"):
        decoder = SemanticImageDecoder.from_pretrained(root)
    assert "no_such_option" in caplog.text and "will be ignored" in caplog.text
    reference = SemanticImageDecoder.from_pretrained(decoder_root)
    assert all(
        torch.equal(a, b)
        for a, b in zip(decoder.transformer.state_dict().values(), reference.transformer.state_dict().values())
    )


# ---------------------------------------------------------------- backbone (unimodal/, owned by another helper)


def load_backbone(path):
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    return LLaDA2MoeModelLM.from_pretrained(path)


def test_backbone_pickle_named_safetensors_is_never_unpickled(backbone_dir, checkpoint_copy, evil_pickle):
    folder = checkpoint_copy(backbone_dir)
    payload, marker = evil_pickle()
    (folder / "model.safetensors").write_bytes(payload)
    with pytest.raises((ValueError, SafetensorError)):
        load_backbone(folder)
    assert not marker.exists()


def test_backbone_pickle_bin_is_ignored(backbone_dir, checkpoint_copy, evil_pickle):
    folder = checkpoint_copy(backbone_dir)
    payload, marker = evil_pickle()
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").unlink()
    (folder / "pytorch_model.bin").write_bytes(payload)
    with pytest.raises(ValueError, match="no safetensors weights"):
        load_backbone(folder)
    assert not marker.exists()


def test_backbone_remote_code_in_config_is_not_run(backbone_dir, checkpoint_copy, tmp_path):
    folder = checkpoint_copy(backbone_dir)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    edit_json(folder / "config.json", lambda config: config.__setitem__("auto_map", {"AutoModel": "evil.Model"}))
    load_backbone(folder)
    assert not marker.exists()


def test_backbone_wrong_shapes_and_wrong_typed_config_raise_value_error(backbone_dir, checkpoint_copy):
    folder = checkpoint_copy(backbone_dir)
    edit_json(folder / "config.json", lambda config: config.__setitem__("hidden_size", "32"))
    with pytest.raises(ValueError, match="hidden_size='32' must be a positive integer"):
        load_backbone(folder)


def test_backbone_truncated_safetensors_raises_value_error(backbone_dir, checkpoint_copy):
    folder = checkpoint_copy(backbone_dir)
    truncate(folder / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        load_backbone(folder)


def test_backbone_negative_layer_count_is_refused_by_the_config(backbone_dir, checkpoint_copy):
    folder = checkpoint_copy(backbone_dir)
    edit_json(folder / "config.json", lambda config: config.__setitem__("num_hidden_layers", -1))
    with pytest.raises(ValueError, match="num_hidden_layers"):
        load_backbone(folder)


def test_backbone_unknown_config_keys_are_kept_as_attributes_and_do_not_change_the_model(backbone_dir, checkpoint_copy):
    folder = checkpoint_copy(backbone_dir)
    edit_json(folder / "config.json", lambda config: config.__setitem__("no_such_option", 1))
    model, reference = load_backbone(folder), load_backbone(backbone_dir)
    assert model.config.no_such_option == 1
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
