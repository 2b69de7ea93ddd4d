"""Training throughput and model FLOPs utilisation (MFU): the MoE backbone, a dense baseline, the decoder.

Everything is measured in one process on the same machine and thread count:

* ``peak``: the best fp32 matmul throughput of a large square matmul loop (the ceiling MFU is taken
  against);
* ``moe_backbone``: forward + backward + AdamW step of `LLaDA2MoeModelLM` built from
  ``configs/shapes/backbone.yaml`` (the default model's backbone; tiny-ish sizes when the file is
  missing), on random token batches with a cross-entropy loss over every position;
* ``dense_baseline``: the same step for a plain PyTorch transformer (``nn.TransformerEncoder``,
  pre-norm) with the same hidden size, layers, heads, vocabulary and the same *active* MLP width
  (top-k experts + shared experts), the anchor for what this machine reaches;
* ``decoder``: the flow-matching training step of the decoder preset ``shapes`` (normal variant).

Model FLOPs per step: 6 x active non-embedding parameters (lm_head included) x tokens + 12 x layers x
hidden x sequence x tokens (attention scores), the same formula for the MoE and the dense model; the
decoder's FLOPs are counted by ``torch.utils.flop_counter`` on one step (its VAE encode included).
Goal (issue 12): MoE backbone MFU >= 0.8 x the dense baseline's.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs" / "shapes"
FALLBACK_BACKBONE = {
    "vocab_size": 768, "hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4,
    "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32, "num_experts": 8,
    "num_shared_experts": 1, "num_experts_per_tok": 2, "n_group": 1, "topk_group": 1,
    "moe_intermediate_size": 128, "first_k_dense_replace": 1,
}


def measure_peak_flops(size: int = 1024, seconds: float = 2.0) -> dict:
    """Best fp32 matmul rate of ``size`` x ``size`` products over about ``seconds``; returns
    ``{"matmul_size", "peak_flops_best", "peak_flops_median"}`` (FLOP/s)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    rates, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds or len(rates) < 3:
        tic = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        rates.append(4 * 2 * size**3 / (time.perf_counter() - tic))
    return {"matmul_size": size, "peak_flops_best": max(rates), "peak_flops_median": statistics.median(rates)}


def backbone_config_dict() -> tuple[dict, str]:
    """The backbone keys of ``configs/shapes/backbone.yaml`` (model section) and where they came from."""
    path = CONFIGS_DIR / "backbone.yaml"
    if path.is_file():
        import yaml

        model = dict(yaml.safe_load(path.read_text())["model"])
        model.pop("preset", None)
        return model, str(path.relative_to(CONFIGS_DIR.parent.parent))
    return dict(FALLBACK_BACKBONE), "fallback (configs/shapes/backbone.yaml missing)"


class DenseTransformerLM(nn.Module):
    """Plain pre-norm PyTorch transformer LM: embedding, ``layers`` encoder layers, final norm, lm_head.

    ids: (batch, seq) int64 -> logits (batch, seq, vocab)."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, mlp_width: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        layer = nn.TransformerEncoderLayer(
            hidden, heads, mlp_width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(self.encoder(self.embed(ids))))


def _active_mlp_width(config) -> int:
    """Active SwiGLU width of a MoE layer: top-k routed experts plus the shared experts."""
    return config.moe_intermediate_size * (config.num_experts_per_tok + (config.num_shared_experts or 0))


def _model_flops(active_params: int, layers: int, hidden: int, seq: int, tokens: int) -> float:
    return 6.0 * active_params * tokens + 12.0 * layers * hidden * seq * tokens


def _moe_active_params(model, config) -> int:
    """Non-embedding parameters a token passes through (routed experts counted top-k of num_experts)."""
    total = 0
    for name, param in model.named_parameters():
        if "word_embeddings" in name:
            continue
        if ".mlp.experts." in name:
            total += param.numel() * config.num_experts_per_tok // config.num_experts
        else:
            total += param.numel()
    return total


def _time_steps(step, steps: int) -> list[float]:
    step()  # warm-up (allocator, first-call dispatch)
    times = []
    for _ in range(steps):
        tic = time.perf_counter()
        step()
        times.append(time.perf_counter() - tic)
    return times


def _throughput(times: list[float], tokens: int, flops: float, peak: float) -> dict:
    best, median = min(times), statistics.median(times)
    return {
        "step_s_min": round(best, 4), "step_s_median": round(median, 4),
        "tokens_per_s_best": round(tokens / best, 1), "tokens_per_s_median": round(tokens / median, 1),
        "model_flops_per_step": flops,
        "mfu_best": round(flops / best / peak, 4), "mfu_median": round(flops / median / peak, 4),
    }


def _lm_step(model, forward, batch: int, seq: int, vocab: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    targets = torch.randint(0, vocab, (batch, seq), generator=generator)

    def step():
        optimizer.zero_grad(set_to_none=True)
        logits = forward(ids)
        nn.functional.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1)).backward()
        optimizer.step()

    return step


def _backbone_cases(batch: int, seq: int, steps: int, peak: float) -> dict:
    from unimask.unimodal.configuration_llada2_moe import LLaDA2MoeConfig
    from unimask.unimodal.modeling_llada2_moe import LLaDA2MoeModelLM

    keys, source = backbone_config_dict()
    keys.setdefault("pad_token_id", 0)
    keys.setdefault("eos_token_id", 0)
    config = LLaDA2MoeConfig(**keys)
    torch.manual_seed(0)
    moe = LLaDA2MoeModelLM(config).train()
    tokens = batch * seq
    head_dim = config.head_dim or config.hidden_size // config.num_attention_heads
    attention_width = config.num_attention_heads * head_dim
    moe_flops = _model_flops(_moe_active_params(moe, config), config.num_hidden_layers, attention_width, seq, tokens)
    moe_times = _time_steps(_lm_step(moe, lambda ids: moe(ids).logits, batch, seq, config.vocab_size), steps)

    width = _active_mlp_width(config)
    dense = DenseTransformerLM(config.vocab_size, config.hidden_size, config.num_hidden_layers,
                               config.num_attention_heads, width).train()
    dense_active = sum(p.numel() for n, p in dense.named_parameters() if not n.startswith("embed"))
    dense_flops = _model_flops(dense_active, config.num_hidden_layers, config.hidden_size, seq, tokens)
    dense_times = _time_steps(_lm_step(dense, dense, batch, seq, config.vocab_size), steps)
    moe_result = _throughput(moe_times, tokens, moe_flops, peak)
    dense_result = _throughput(dense_times, tokens, dense_flops, peak)
    return {
        "backbone_config": source, "batch": batch, "seq": seq,
        "moe_backbone": {**moe_result, "experts_implementation": config._experts_implementation},
        "dense_baseline": {**dense_result, "mlp_width": width},
        "moe_over_dense_mfu_best": round(moe_result["mfu_best"] / dense_result["mfu_best"], 3),
    }


def _decoder_case(batch: int, steps: int, peak: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from unimask.decoders.decoder_presets import build_decoder, load_decoder_preset
    from unimask.decoders.training_losses import flow_matching_loss

    preset = load_decoder_preset("shapes")
    decoder = build_decoder(preset, variant="normal", seed=0)
    decoder.transformer.train()
    height, width = preset["default_grid"]
    pixels = 16 * preset["resolution_multiplier"]
    generator = torch.Generator().manual_seed(0)
    batch_inputs = {
        "pixel_values": torch.rand(batch, 3, height * pixels, width * pixels, generator=generator) * 2 - 1,
        "token_grids": torch.randint(0, preset["sigvq"]["vocab_size"], (batch, height, width), generator=generator),
    }
    optimizer = torch.optim.AdamW(decoder.transformer.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = flow_matching_loss(decoder, batch_inputs, generator=torch.Generator().manual_seed(1))
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    result = _throughput(_time_steps(step, steps), batch, counter.get_total_flops(), peak)
    result["images_per_s_best"] = result.pop("tokens_per_s_best")
    result["images_per_s_median"] = result.pop("tokens_per_s_median")
    return {"preset": "shapes", "batch": batch, "image_size": [height * pixels, width * pixels], **result}


def run(quick: bool = False) -> dict:
    """Measure peak matmul FLOP/s, then the training steps; prints and returns the JSON dict
    ``{"threads", "peak", "backbone": {"moe_backbone", "dense_baseline", "moe_over_dense_mfu_best", ...},
    "decoder", "goal_met"}`` (goal: MoE MFU >= 0.8 x dense MFU)."""
    steps = 2 if quick else 5
    peak = measure_peak_flops(seconds=1.0 if quick else 3.0)
    report: dict = {"threads": torch.get_num_threads(), "peak": peak}
    report["backbone"] = _backbone_cases(batch=2 if quick else 4, seq=256 if quick else 768, steps=steps,
                                         peak=peak["peak_flops_best"])
    try:
        report["decoder"] = _decoder_case(batch=2 if quick else 8, steps=steps, peak=peak["peak_flops_best"])
    except (ValueError, KeyError, RuntimeError, FileNotFoundError) as error:
        report["decoder"] = {"skipped": f"{type(error).__name__}: {error}"}
    report["goal_met"] = report["backbone"]["moe_over_dense_mfu_best"] >= 0.8
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
