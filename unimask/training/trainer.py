"""The one trainer for every stage: data -> stage batches -> loss -> AdamW, with exact resume.

Every failure that can be found before training (unknown stage or model preset, missing shard,
empty dataset, checkpoints in the way) is raised by the constructor, before any step runs.

One optimizer step = ``grad_accum_steps`` micro-batches of ``micro_batch_size`` samples per
process; each process's loss is the mean over its micro-batch, gradients are averaged over
micro-steps and (through FSDP2) over processes, so the update is that of the mean loss over the
global batch. The logged loss is that global mean.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

from unimask.data.loader import CORRUPT, ShardSampleStream, check_dataset_not_empty, expand_shard_paths, iterate_samples
from unimask.data.packing import fits_in_budget
from unimask.training.checkpoint import (
    CheckpointError,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)
from unimask.training.distributed import (
    DistContext,
    all_reduce_mean,
    all_reduce_sum,
    autocast_context,
    init_distributed,
    no_gradient_sync,
    parallelize,
)
from unimask.training.metrics import MetricsLogger, format_step_line, peak_flops_per_device
from unimask.training.recipe import TrainRecipe
from unimask.training.schedules import lr_multiplier
from unimask.training.stages import Stage, get_stage

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm was NaN/inf and the recipe's ``nan_policy`` says to stop."""


@dataclasses.dataclass
class TrainResult:
    """What a :meth:`Trainer.fit` call did.

    Attributes:
        step: optimizer steps completed in total (including before a resume).
        losses: global mean loss of every step run by this call, in order.
        skipped_samples: corrupt records dropped so far, summed over ranks.
        nan_skips: steps skipped for a non-finite loss so far.
        checkpoint: the last checkpoint written, if any.
        export_dir: where the stage exported the weights, if it did.
    """

    step: int
    losses: list[float]
    skipped_samples: int
    nan_skips: int
    checkpoint: Path | None
    export_dir: Path | None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _data_signature(recipe: TrainRecipe, context: DistContext) -> dict[str, Any]:
    data = recipe.data
    return {"seed": data.seed, "split": data.split, "resampled": data.resampled, "num_workers": data.num_workers,
            "shuffle_buffer": data.shuffle_buffer, "token_budget": data.token_budget, "world_size": context.world_size}


class Trainer:
    """Train ``recipe.stage`` as the recipe says; call :meth:`fit`.

    Args:
        recipe: the loaded :class:`TrainRecipe`.
        resume: continue from ``<out_dir>/checkpoints/latest`` (required to exist); without it,
            ``out_dir`` must not hold checkpoints yet.
        context: process placement; default joins torchrun's process group if launched by it.
    Raises:
        unimask.config.ConfigError: unknown stage or model preset, bad stage options.
        ValueError: missing shard, empty dataset, checkpoints in the way / missing for resume.
        NotImplementedError: the stage's model code is not available.
    """

    def __init__(self, recipe: TrainRecipe, *, resume: bool = False, context: DistContext | None = None):
        self.recipe = recipe
        self.resume = resume
        self.stage: Stage = get_stage(recipe.stage)(recipe)
        if recipe.data.token_budget and type(self.stage).sample_length is Stage.sample_length:
            raise ValueError(f"data.token_budget={recipe.data.token_budget} but stage {recipe.stage!r} does not support packing")
        self.shards = expand_shard_paths(recipe.data.shards)
        check_dataset_not_empty(self.shards)
        self.out_dir = Path(recipe.out_dir)
        self.checkpoint_root = self.out_dir / "checkpoints"
        existing = latest_checkpoint(self.checkpoint_root)
        if resume and existing is None:
            raise ValueError(f"--resume given but {self.checkpoint_root} holds no checkpoint")
        if not resume and existing is not None:
            raise ValueError(f"{self.checkpoint_root} already holds checkpoint {existing.name}; pass --resume to continue it or choose another out_dir")
        self.context = context or init_distributed()
        self.step = 0
        self.position = 0
        self.skipped_local = 0
        self.nan_skips = 0
        self.consecutive_nan_skips = 0
        self._peeked: dict[str, Any] | None = None
        self._samples: Iterator[dict[str, Any]] | None = None

    # -- data --------------------------------------------------------------------------------
    def _open_stream(self) -> None:
        data = self.recipe.data
        stream = ShardSampleStream(
            self.shards, seed=data.seed, rank=self.context.rank, world_size=self.context.world_size,
            num_workers=data.num_workers, resampled=data.resampled, split=data.split,
            shuffle_buffer=data.shuffle_buffer, decode_images=data.decode_images and self.stage.decode_images,
            start=self.position,
        )
        self._samples = iterate_samples(stream)
        self._peeked = None

    def _take(self) -> dict[str, Any]:
        """Next good sample; corrupt markers are counted (and consumed) on the way."""
        while True:
            item = self._peeked if self._peeked is not None else next(self._samples)
            self._peeked = None
            if item.get(CORRUPT):
                self.position += 1
                self.skipped_local += 1
                continue
            return item

    def _next_micro_batch(self) -> list[dict[str, Any]]:
        """``micro_batch_size`` samples, or as many as pack into that many rows of ``token_budget``."""
        size, budget = self.recipe.micro_batch_size, self.recipe.data.token_budget
        samples: list[dict[str, Any]] = []
        if not budget:
            while len(samples) < size:
                samples.append(self._take())
                self.position += 1
            return samples
        rows: list[list[int]] = [[]]
        while True:
            sample = self._take()
            length = self.stage.sample_length(sample)
            if not fits_in_budget(rows[-1], length, budget):
                if len(rows) == size:
                    self._peeked = sample  # not consumed: a resume re-reads it from the stream
                    return samples
                rows.append([])
            rows[-1].append(length)
            samples.append(sample)
            self.position += 1

    # -- checkpoints --------------------------------------------------------------------------
    def _save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Path:
        payload = {"rng": capture_rng_state(), "data_position": self.position, "skipped_samples": self.skipped_local, "step": self.step}
        info = {"step": self.step, "world_size": self.context.world_size, "stage": self.recipe.stage,
                "nan_skips": self.nan_skips, "consecutive_nan_skips": self.consecutive_nan_skips,
                "data": _data_signature(self.recipe, self.context), "time": time.time()}
        return save_checkpoint(self.checkpoint_root, self.step, model, optimizer, payload, info, self.context, self.recipe.checkpoint.keep_last)

    def _restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Path:
        path = latest_checkpoint(self.checkpoint_root)
        payload, info = load_checkpoint(path, model, optimizer, self.context)
        expected = _data_signature(self.recipe, self.context)
        changed = {k: (info["data"].get(k), v) for k, v in expected.items() if info["data"].get(k) != v}
        if changed:
            raise CheckpointError(f"cannot resume {path} exactly: data settings changed {changed} (checkpoint value, recipe value)")
        self.step, self.position = int(info["step"]), int(payload["data_position"])
        self.skipped_local = int(payload["skipped_samples"])
        self.nan_skips, self.consecutive_nan_skips = int(info["nan_skips"]), int(info["consecutive_nan_skips"])
        restore_rng_state(payload["rng"])
        return path

    # -- training -----------------------------------------------------------------------------
    def _build(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(self.recipe.seed)  # identical initial weights on every rank
        model = self.stage.build_model()
        model = parallelize(model, self.stage.blocks(model), self.context, self.recipe.precision, self.recipe.activation_checkpointing)
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
        optim = self.recipe.optim
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
        )
        return model, optimizer

    def _export(self, model: torch.nn.Module) -> Path | None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.context.is_main:
            return None
        plain = self.stage.build_model()
        plain.load_state_dict(full_state)
        return self.stage.export(plain.eval(), self.out_dir / "export")

    def fit(self) -> TrainResult:
        """Run from the current step (0, or the checkpoint's) to ``recipe.steps``.

        Returns:
            A :class:`TrainResult`.
        Raises:
            NonFiniteLossError: ``nan_policy: stop`` and a non-finite loss or gradient norm, or
                more than ``max_nan_skips`` consecutive skipped steps.
            CheckpointError: a checkpoint could not be written (the previous one stays the latest).
        """
        recipe, context = self.recipe, self.context
        if context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.checkpoint_root)
            (self.out_dir / "recipe.json").write_text(json.dumps(dataclasses.asdict(recipe), indent=2))
        model, optimizer = self._build()
        torch.manual_seed(recipe.seed + 7919 * context.rank)  # per-rank noise for stochastic losses
        if self.resume:
            path = self._restore(model, optimizer)
            logger.info("resumed from %s at step %d (data position %d)", path, self.step, self.position)
        self._open_stream()
        metrics = MetricsLogger(self.out_dir, context.is_main, recipe.logging.tensorboard, recipe.logging.wandb,
                                run_name=self.out_dir.name, wandb_project=recipe.logging.wandb_project, config=dataclasses.asdict(recipe))
        peak_flops = peak_flops_per_device(context.device, recipe.logging.peak_flops)
        show_bar = context.is_main and recipe.logging.progress_bar
        bar = tqdm(total=recipe.steps, initial=self.step, disable=not show_bar, dynamic_ncols=True)
        losses: list[float] = []
        last_checkpoint = None
        parameters = [p for p in model.parameters() if p.requires_grad]
        model.train()
        try:
            while self.step < recipe.steps:
                record = self._train_step(model, optimizer, parameters, peak_flops)
                losses.append(record["loss"])
                self.step += 1
                if self.step % recipe.logging.every == 0 or self.step == recipe.steps:
                    metrics.log(record)
                    if context.is_main:
                        line = format_step_line(record, recipe.steps)
                        tqdm.write(line) if show_bar else print(line, flush=True)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4g}", samples_s=f"{record['samples_per_s']:.1f}")
                every = recipe.checkpoint.every
                if (every and self.step % every == 0) or self.step == recipe.steps:
                    last_checkpoint = self._save(model, optimizer)
        finally:
            bar.close()
            metrics.close()
            self._samples = None
        export_dir = self._export(model) if recipe.export else None
        skipped = int(all_reduce_sum([float(self.skipped_local)], context)[0])
        if context.is_main:
            print(f"done: step {self.step}/{recipe.steps}, skipped corrupt samples {skipped}, nan skips {self.nan_skips}", flush=True)
        return TrainResult(self.step, losses, skipped, self.nan_skips, last_checkpoint, export_dir)

    def _train_step(self, model, optimizer, parameters, peak_flops) -> dict[str, Any]:
        recipe, context = self.recipe, self.context
        started = time.perf_counter()
        lr = recipe.optim.lr * lr_multiplier(self.step, recipe.steps, recipe.schedule.kind, recipe.schedule.warmup_steps,
                                             recipe.schedule.decay_steps, recipe.schedule.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.stage.on_step(self.step)
        accum = recipe.grad_accum_steps
        loss_total, counts, flops = 0.0, {"samples": 0, "tokens": 0, "images": 0}, 0.0
        stage_scalars: dict[str, float] = {}
        stage_other: dict[str, Any] = {}
        for micro in range(accum):
            batch = _to_device(self.stage.make_batch(self._next_micro_batch()), context.device)
            with no_gradient_sync(model, skip=micro < accum - 1), autocast_context(context, recipe.precision):
                loss, stage_metrics = self.stage.loss(model, batch)
                (loss / accum).backward()
            loss_total += float(loss.detach().float())
            batch_counts = self.stage.batch_counts(batch)
            for key in counts:
                counts[key] += batch_counts.get(key, 0)
            flops += self.stage.flops_per_step(model, batch_counts)
            for key, value in stage_metrics.items():
                if isinstance(value, (int, float)):
                    stage_scalars[key] = stage_scalars.get(key, 0.0) + float(value) / accum
                else:
                    stage_other[key] = value
        max_norm = recipe.optim.grad_clip if recipe.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        scalar_keys = sorted(stage_scalars)
        reduced = all_reduce_mean([loss_total / accum] + [stage_scalars[k] for k in scalar_keys], context)
        global_loss = reduced[0]
        sums = all_reduce_sum([counts["samples"], counts["tokens"], counts["images"], flops], context)
        finite = math.isfinite(global_loss) and math.isfinite(grad_norm)
        after_step: dict[str, float] = {}
        if finite:
            optimizer.step()
            after_step = self.stage.after_optimizer_step()
            self.consecutive_nan_skips = 0
        optimizer.zero_grad(set_to_none=True)
        elapsed = max(time.perf_counter() - started, 1e-9)
        record: dict[str, Any] = {
            "step": self.step + 1, "loss": global_loss, "lr": lr, "grad_norm": grad_norm,
            "samples_per_s": sums[0] / elapsed, "tokens_per_s": sums[1] / elapsed, "images_per_s": sums[2] / elapsed,
            "mfu": (sums[3] / elapsed / (peak_flops * context.world_size)) if peak_flops and sums[3] else None,
            "step_time_s": elapsed, "skipped_samples": None, "nan_skips": self.nan_skips,
            **dict(zip(scalar_keys, reduced[1:])), **stage_other, **after_step,
        }
        if not finite:
            self._handle_non_finite(record)
        record["nan_skips"] = self.nan_skips
        record["skipped_samples"] = int(all_reduce_sum([float(self.skipped_local)], context)[0])
        return record

    def _handle_non_finite(self, record: dict[str, Any]) -> None:
        step, recipe = record["step"], self.recipe
        message = f"step {step}: non-finite loss {record['loss']} / gradient norm {record['grad_norm']}"
        if recipe.nan_policy == "stop":
            raise NonFiniteLossError(f"{message}; nan_policy is 'stop'")
        self.nan_skips += 1
        self.consecutive_nan_skips += 1
        logger.warning("%s: update skipped (nan_policy 'skip', %d in a row)", message, self.consecutive_nan_skips)
        if self.consecutive_nan_skips > recipe.max_nan_skips:
            raise NonFiniteLossError(f"{message}; {self.consecutive_nan_skips} consecutive non-finite steps exceed max_nan_skips={recipe.max_nan_skips}")
