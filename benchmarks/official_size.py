"""Official-size benchmark on one CUDA GPU: the LLaDA2.0-Uni backbone (16B-A1B MoE) and image decoder (Z-Image,
about 6B parameters) at their published sizes, random bf16 weights, side by side in one process.

* ``backbone.prefill``: one bidirectional forward over 1024 and 4096 tokens: tokens/s, the rate of the matmuls a
  token really runs (attention, the dense layer, 8 routed + 1 shared expert a MoE layer, lm_head) in TFLOP/s, and
  peak memory.
* ``backbone.moe_dispatch``: one MoE layer's experts on 1024 routed tokens, the model's grouped dispatch
  (``grouped_mm``) against the per-expert loop (``eager``), each checked against the same experts in fp32.
* ``backbone.forward_latency``: one forward over a 32-token block alone, over 1024 + 32 tokens, and over the block
  on a cached 1024-token prefix, with the kernel count and GPU-busy share of the cached step (profiler).
* ``backbone.editing_decode``: an editing-shaped request (a 32 x 32 reference code grid in the prompt, a 16 x 16
  grid to write in blocks of 32, 8 steps a block, threshold off) decoded with the SPRINT prefix cache and without;
  the forwards are equal, so the wall ratio is what the cache saves (``cache_speedup``), and ``agreement`` is the
  share of written codes equal in both (bf16 sums in another order can flip a near-tie).
* ``decoder``: the 8-step turbo decode against the 50-step guided one of a 32 x 32 grid at 2x (1024 x 1024
  pixels), VAE decode included, and peak memory.

``--quick`` runs the tiny presets (``configs/models/backbone/tiny.yaml``, decoder ``tiny``) at small sizes on
whatever device there is, in fp32: the wiring, not the figures. Without ``--quick`` there must be a CUDA device
(fp32 weights of this size do not fit a CPU machine's memory); without one it returns ``{"skipped": reason}``.
Run: ``python -m unimask.benchmarks.official_size [--quick]``.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from typing import Callable, Iterator

import torch

# Published special ids (reference-llada2-uni.md): the mask and end-of-sequence tokens; text ids sit below
# image_token_offset. The tiny preset keeps its own small ids.
OFFICIAL_IDS = {"mask": 156895, "eos": 156892, "text_high": 150000}
TINY_IDS = {"mask": 255, "eos": 1, "text_high": 240}
# Random weights give near-flat distributions; a sharper lm_head makes the decoding choose like a trained model.
LOGIT_SCALE = 30.0


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device, repeats: int, warm_up: bool = True
           ) -> tuple[list[float], object]:
    """Seconds of ``repeats`` calls of ``fn`` (after one warm-up call unless ``warm_up`` is False), and the last
    result."""
    result = None
    if warm_up:
        result = fn()
        _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times, result


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def backbone_config(preset: str):
    """`LLaDA2MoeConfig` of ``configs/models/backbone/<preset>.yaml``."""
    from unimask.presets import read_component_preset
    from unimask.unimodal.configuration_llada2_moe import LLaDA2MoeConfig

    keys = read_component_preset("backbone", preset)
    keys.pop("architectures", None)
    keys.pop("model_type", None)
    return LLaDA2MoeConfig(**keys)


def active_matmul_parameters(config) -> int:
    """Weights one token multiplies with in a forward (the embedding lookup is no matmul): attention projections of
    every layer, the dense MLP of the first layers, the router, ``num_experts_per_tok`` routed and the shared
    experts of the others, and lm_head."""
    hidden, head_dim = config.hidden_size, config.head_dim
    attention = hidden * (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    attention += config.num_attention_heads * head_dim * hidden
    dense_mlp = 3 * hidden * config.intermediate_size
    experts = config.num_experts_per_tok + config.num_shared_experts
    moe_mlp = 3 * hidden * config.moe_intermediate_size * experts + config.num_experts * hidden
    dense_layers = config.first_k_dense_replace
    moe_layers = config.num_hidden_layers - dense_layers
    return (config.num_hidden_layers * attention + dense_layers * dense_mlp + moe_layers * moe_mlp
            + hidden * config.vocab_size)


def forward_flops(config, tokens: int) -> float:
    """Matmul FLOPs of one bidirectional forward over ``tokens`` tokens: 2 per active weight and token, plus the
    attention scores and their weighted sum (4 * tokens^2 * heads * head_dim a layer)."""
    attention = 4 * tokens**2 * config.num_attention_heads * config.head_dim * config.num_hidden_layers
    return 2.0 * active_matmul_parameters(config) * tokens + attention


def build_backbone(preset: str, device: torch.device, dtype: torch.dtype):
    """A randomly initialised `LLaDA2MoeModelLM` of ``preset``, allocated directly on ``device`` in ``dtype``
    (at the official size fp32 on the host first would take 64 GB), lm_head scaled by ``LOGIT_SCALE``."""
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    torch.manual_seed(0)
    with _default_dtype(dtype), device:
        model = LLaDA2MoeModelLM(backbone_config(preset)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(LOGIT_SCALE)
    return model


def prefill(model, config, device: torch.device, lengths: tuple[int, ...], repeats: int) -> dict:
    """Timed bidirectional forwards of random text ids (batch 1) per length; see the module docstring."""
    results = {}
    generator = torch.Generator().manual_seed(0)
    for length in lengths:
        input_ids = torch.randint(0, config.image_token_offset, (1, length), generator=generator).to(device)
        _reset_peak(device)
        times, output = _timed(lambda: model(input_ids).logits, device, repeats)
        best = min(times)
        results[str(length)] = {
            "seconds_min": round(best, 5), "seconds_median": round(statistics.median(times), 5),
            "tokens_per_second": round(length / best, 1),
            "matmul_tflops": round(forward_flops(config, length) / best / 1e12, 2),
            "peak_memory_gib": _peak_gib(device),
            "logits_finite": bool(torch.isfinite(output).all()),
        }
    return results


def moe_dispatch(model, config, device: torch.device, length: int, repeats: int) -> dict:
    """One MoE layer's experts on ``length`` routed tokens: the grouped dispatch (the model's default) against the
    per-expert loop, seconds and their ratio, and each one's largest error against the same experts in fp32,
    relative to the largest fp32 output (a whole-model comparison would mix in routing flips of near-tie experts)."""
    from unimask.unimodal.moe_routing import naive_experts_forward

    block = model.model.layers[config.first_k_dense_replace].mlp
    hidden = torch.randn(length, config.hidden_size, generator=torch.Generator().manual_seed(1)).to(device)
    hidden = hidden.to(block.experts.gate_up_proj.dtype)
    topk_index, topk_weight, _ = block.gate(hidden)
    topk_weight = topk_weight.to(hidden.dtype)
    results, outputs = {}, {}
    previous = model.config._experts_implementation
    try:
        for name in ("grouped_mm", "eager"):
            model.config._experts_implementation = name
            times, outputs[name] = _timed(lambda: block.experts(hidden, topk_index, topk_weight), device, repeats)
            results[name] = {"seconds_min": round(min(times), 6)}
    finally:
        model.config._experts_implementation = previous
    reference = naive_experts_forward(hidden.float(), topk_index, topk_weight.float(), block.experts.gate_up_proj.float(),
                                      block.experts.down_proj.float(), block.experts.act_fn)
    scale = float(reference.abs().max())
    for name in ("grouped_mm", "eager"):
        results[name]["max_error_vs_fp32_relative"] = round(float((outputs[name].float() - reference).abs().max()) / scale, 5)
    results["grouped_over_eager"] = round(results["eager"]["seconds_min"] / results["grouped_mm"]["seconds_min"], 2)
    results["tokens"] = length
    return results


def forward_latency(model, config, device: torch.device, prefix: int, block: int, repeats: int) -> dict:
    """Seconds of one forward over a ``block``-token block alone, over ``prefix + block`` tokens, and over the block
    with a cached ``prefix``-token prefix (what a SPRINT step runs); and, from the profiler on the cached step, the
    kernels it launches and the GPU time they take, which says whether a step waits on the GPU or on the host."""
    from torch.profiler import ProfilerActivity, profile

    generator = torch.Generator().manual_seed(2)
    full = torch.randint(0, config.image_token_offset, (1, prefix + block), generator=generator).to(device)
    positions = torch.arange(prefix + block, device=device)[None]
    cache = model(full[:, :prefix], position_ids=positions[:, :prefix], use_cache=True).past_key_values

    def cached_step():
        return model(full[:, prefix:], position_ids=positions[:, prefix:], past_key_values=cache).logits

    results = {}
    for name, fn in (("block_alone", lambda: model(full[:, prefix:]).logits),
                     ("prefix_and_block", lambda: model(full).logits), ("block_on_cached_prefix", cached_step)):
        times, _ = _timed(fn, device, repeats)
        results[name] = {"seconds_min": round(min(times), 5)}
    results["tokens"] = {"prefix": prefix, "block": block}
    if device.type == "cuda":
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            cached_step()
            _synchronize(device)
        kernels = [event for event in profiler.events() if event.device_type == torch.autograd.DeviceType.CUDA]
        gpu_seconds = sum(event.time_range.elapsed_us() for event in kernels) / 1e6
        step_seconds = results["block_on_cached_prefix"]["seconds_min"]
        results["cached_step_profile"] = {"kernels": len(kernels), "gpu_busy_seconds": round(gpu_seconds, 5),
                                          "gpu_busy_share": round(gpu_seconds / step_seconds, 3)}
    return results


def editing_decode(model, config, device: torch.device, ids: dict, reference_grid: int, output_grid: int,
                   repeats: int) -> dict:
    """Cached against uncached decoding of one editing-shaped request; see the module docstring."""
    from unimask.benchmarks.cache import edit_requests
    from unimask.unimodal.sampler import IMAGE_KIND, MaskedDiffusionSampler
    from unimask.unimodal.sampler_config import SamplerConfig

    image_range = (config.image_token_offset, config.vocab_size)
    image_vocab = torch.zeros(config.vocab_size, dtype=torch.bool)
    image_vocab[image_range[0]:image_range[1]] = True
    sampler = MaskedDiffusionSampler(model, mask_id=ids["mask"], eos_id=ids["eos"],
                                     kind_vocab_masks={IMAGE_KIND: image_vocab.to(device)})
    request = edit_requests(1, 1, reference_grid, output_grid=output_grid, text_ids=(2, ids["text_high"]),
                            image_ids=image_range, mask_id=ids["mask"])
    inputs = {name: tensor.to(device) for name, tensor in request.items()}
    base = SamplerConfig(block_length=32, num_inference_steps=8, threshold=1.0, eos_early_stop=False)
    results, sequences = {}, {}
    for name, sampler_config in (("no_cache", base), ("cache", base.replace(use_sprint=True, keep_ratio=1.0))):
        _reset_peak(device)

        def decode():
            return sampler(**inputs, config=sampler_config, generator=torch.Generator().manual_seed(0))

        times, output = _timed(decode, device, repeats)
        sequences[name] = output.sequences
        results[name] = {"nfe": output.stats.nfe, "seconds_min": round(min(times), 4),
                         "peak_memory_gib": _peak_gib(device)}
    written = inputs["token_kinds"] == IMAGE_KIND
    return {
        "prefix_tokens": int((~written).sum()), "written_tokens": int(written.sum()),
        "variants": results,
        "cache_speedup": round(results["no_cache"]["seconds_min"] / results["cache"]["seconds_min"], 2),
        "agreement": round(float((sequences["cache"] == sequences["no_cache"])[written].float().mean()), 4),
    }


def decoder_turbo_vs_normal(preset: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    """8-step turbo against 50-step guided decode of the preset's default grid, sharing one set of random weights."""
    from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
    from unimask.decoders.flow_schedule import make_decoder_scheduler
    from unimask.decoders.semantic_decoder import SemanticImageDecoder

    config = load_decoder_preset(preset)
    with _default_dtype(dtype), device:
        turbo = build_decoder(config, variant="turbo", seed=0)
    normal = SemanticImageDecoder(turbo.sigvq, turbo.transformer, turbo.vae, make_decoder_scheduler("normal"),
                                  decoder_variant="normal")
    height, width = config["default_grid"]
    multiplier = config["resolution_multiplier"]
    grids = torch.randint(0, config["sigvq"]["vocab_size"], (1, height, width),
                          generator=torch.Generator().manual_seed(0))
    parameters = sum(p.numel() for p in turbo.transformer.parameters())
    results = {"grid": [height, width], "image_size": list(turbo.output_size(height, width, multiplier)),
               "transformer_parameters": parameters}
    with torch.inference_mode():
        for name, decoder, runs in (("turbo", turbo, repeats), ("normal", normal, 1)):
            _reset_peak(device)

            def decode():
                return decoder(grids, resolution_multiplier=multiplier, output_type="pt",
                               generator=torch.Generator().manual_seed(0)).images

            # The turbo runs warmed up the same kernels; a 50-step warm-up would double the normal decode's cost.
            times, images = _timed(decode, device, runs, warm_up=name == "turbo")
            steps, guidance = decoder.defaults
            results[name] = {"steps": steps, "guidance_scale": guidance, "seconds_min": round(min(times), 4),
                             "peak_memory_gib": _peak_gib(device), "images_finite": bool(torch.isfinite(images).all())}
    results["normal_over_turbo"] = round(results["normal"]["seconds_min"] / results["turbo"]["seconds_min"], 2)
    return results


def run(quick: bool = False) -> dict:
    """Run every part (see the module docstring); prints and returns the JSON dict, or ``{"skipped": reason}``
    without ``quick`` on a machine with no CUDA device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not quick and device.type != "cuda":
        reason = ("the official-size benchmark needs a CUDA device (about 45 GB of bf16 weights); run it with "
                  "--quick for the tiny presets on the CPU")
        print(json.dumps({"skipped": reason}))
        return {"skipped": reason}
    preset, decoder_preset = ("tiny", "tiny") if quick else ("llada2-uni-16b", "official")
    dtype = torch.float32 if quick else torch.bfloat16
    ids = TINY_IDS if quick else OFFICIAL_IDS
    repeats = 1 if quick else 3
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "dtype": str(dtype).removeprefix("torch."), "backbone_preset": preset,
                    "decoder_preset": decoder_preset}
    started = time.perf_counter()
    model = build_backbone(preset, device, dtype)
    config = model.config
    _synchronize(device)
    report["backbone"] = {
        "build_seconds": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "active_matmul_parameters_per_token": active_matmul_parameters(config),
        "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
    }
    with torch.inference_mode():
        report["backbone"]["prefill"] = prefill(model, config, device, (64, 128) if quick else (1024, 4096), repeats)
        report["backbone"]["moe_dispatch"] = moe_dispatch(model, config, device, 64 if quick else 1024, repeats)
        report["backbone"]["forward_latency"] = forward_latency(model, config, device, 32 if quick else 1024,
                                                                8 if quick else 32, repeats)
    with torch.no_grad():
        report["backbone"]["editing_decode"] = editing_decode(model, config, device, ids, 4 if quick else 32,
                                                              4 if quick else 16, 1 if quick else 2)
    del model
    _reset_peak(device)
    report["decoder"] = decoder_turbo_vs_normal(decoder_preset, device, dtype, repeats)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
