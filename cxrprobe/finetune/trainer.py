"""The fine-tuning engine: a backbone plus a linear head, one epoch of training, predictions.

:class:`Trainer` owns the model, AdamW, the lr schedule and the grad scaler, and knows how to save
and restore all of them (with every rank's random states) so a resumed run continues exactly. It
trains on uint8 batches from an :class:`ImageSource`: pixels go to the device as uint8, are
normalised with the model's mean and std (or the config's, e.g. the study recipe's mean 0 / std 1:
plain [0, 1] input), augmented there (draws fixed by seed, epoch and row), and run under bf16
autocast on CUDA (timm's attention uses PyTorch SDPA) or in float32, as the config's precision says.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrprobe.cache.source import ImageSource
from cxrprobe.data.preprocess import NO_NORMALIZATION
from cxrprobe.data.targets import to_targets
from cxrprobe.devices import DistContext
from cxrprobe.errors import ConfigError
from cxrprobe.finetune.augment import random_flip_rotate, row_uniforms
from cxrprobe.finetune.checkpoint import capture_rng, restore_rng, seed_everything
from cxrprobe.finetune.distributed import (
    all_sum,
    eval_shard,
    gather_rows,
    gather_stacked,
    shard_order,
)
from cxrprobe.finetune.loss import masked_bce, masked_bce_sum
from cxrprobe.finetune.schedule import WarmupCosine, make_scheduler, param_groups
from cxrprobe.progress import Bar, show_note

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def probabilities(logits: np.ndarray) -> np.ndarray:
    """float32 sigmoid of (n, L) logits (NaN rows stay NaN): the scores every output holds."""
    return torch.sigmoid(torch.from_numpy(np.asarray(logits, dtype=np.float32))).numpy()


def recipe_normalization(config: Any) -> str | None:
    """What the model spec records as its normalisation when ``config``'s recipe set mean and std
    (None when they came from the model config or from --mean/--std)."""
    if "mean" not in config.recipe_filled or config.mean is None:
        return None
    if (tuple(config.mean), tuple(config.std)) == NO_NORMALIZATION:
        return f"recipe {config.recipe}: none ([0, 1] input)"
    return f"recipe {config.recipe}: mean {list(config.mean)}, std {list(config.std)}"


class Classifier(nn.Module):
    """A timm backbone (pooled features) followed by a new linear head, one logit per finding."""

    def __init__(self, backbone: nn.Module, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


@dataclass(frozen=True)
class Plan:
    """Batch arithmetic fixed for the whole run (and checked on resume)."""

    micro_batch: int
    accum_steps: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    precision: str


@dataclass
class EpochStats:
    """One training epoch over all ranks: mean loss, images seen and the wall time."""

    loss: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


class Trainer:
    """Model, optimiser, schedule and random state of one fine-tuning run on one rank."""

    def __init__(
        self,
        config: Any,
        source: ImageSource,
        ctx: DistContext,
        plan: Plan,
        train_rows: np.ndarray,
        pos_weight: np.ndarray,
    ) -> None:
        from cxrprobe.models import create_model

        self.config, self.source, self.ctx, self.plan = config, source, ctx, plan
        self.train_rows = np.asarray(train_rows, dtype=np.int64)
        targets, self.observed = to_targets(source.metadata.labels, config.uncertain, config.blank)
        self.targets = torch.from_numpy(targets)  # NaN where masked out of the loss
        self.device = ctx.device
        seed_everything(config.seed)  # same initial weights on every rank
        backbone, self.spec = create_model(
            config.init,
            config.weights,
            img_size=config.size,
            num_classes=0,
            arch=config.arch,
            model_kwargs=config.model_kwargs,
            mean=config.mean,
            std=config.std,
            drop_path_rate=config.drop_path,
        )
        normalization = recipe_normalization(config)
        if normalization is not None:  # create_model took the recipe's values for --mean/--std
            self.spec = replace(self.spec, normalization=normalization)
        if config.grad_checkpointing:
            if not hasattr(backbone, "set_grad_checkpointing"):
                raise ConfigError(
                    f"--grad-checkpointing: {self.spec.arch} does not support it; drop the option"
                )
            backbone.set_grad_checkpointing(True)
        self.model = Classifier(backbone, len(source.metadata.findings)).to(self.device)
        self.optimizer = torch.optim.AdamW(
            param_groups(
                backbone, self.model.head, config.lr, config.weight_decay, config.layer_decay
            ),
            lr=config.lr,
            weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",  # one kernel for the whole update on GPUs
        )
        self.scheduler = make_scheduler(
            self.optimizer,
            WarmupCosine(plan.total_steps, plan.warmup_steps, config.schedule, config.min_lr_ratio),
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=plan.precision == "fp16")
        seed_everything(config.seed + 1 + ctx.rank)  # per-rank streams for drop-path, loaders
        self.pos_weight = torch.as_tensor(pos_weight, dtype=torch.float32, device=self.device)
        mean = torch.tensor(self.spec.mean, dtype=torch.float32)
        std = torch.tensor(self.spec.std, dtype=torch.float32)
        self.black = ((0.0 - mean) / std).to(self.device)  # normalised value of a black pixel
        self.failures: dict[int, str] = {}
        self._train_model: nn.Module | None = None
        self._ddp: nn.Module | None = None

    # ------------------------------------------------------------------------- model wrapping
    @property
    def train_model(self) -> nn.Module:
        """The module used for training steps: DDP-wrapped when distributed, compiled if asked."""
        if self._train_model is None:
            model: nn.Module = self.model
            if self.ctx.distributed:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                model = self._ddp = DistributedDataParallel(self.model, device_ids=ids)
            if self.config.compile:
                model = torch.compile(model)
            self._train_model = model
        return self._train_model

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = DTYPES[self.plan.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _inputs(
        self, pixels: torch.Tensor, rows: torch.Tensor, epoch: int | None = None
    ) -> torch.Tensor:
        """uint8 (B, S, S) of ``rows`` → normalised (B, 3, size, size) on the device; augmented
        when ``epoch`` is given (training), with draws fixed by (seed, epoch, row)."""
        from cxrprobe.data.preprocess import to_model_input

        if pixels.shape[0] == 0:  # every image of the batch failed to load
            return torch.zeros((0, 3, self.config.size, self.config.size), device=self.device)
        x = to_model_input(
            pixels.to(self.device, non_blocking=True),
            self.spec.mean,
            self.spec.std,
            self.config.size,
        )
        if epoch is not None and (self.config.hflip > 0 or self.config.rotate > 0):
            x = random_flip_rotate(
                x,
                row_uniforms(self.config.seed, epoch, rows),
                self.config.hflip,
                self.config.rotate,
                fill=self.black,
                mode=self.config.rotate_mode,
            )
        return x

    # ------------------------------------------------------------------------------- training
    def epoch_batches(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """This rank's micro-batches (row arrays) and each optimiser step's global label count.

        The count of observed labels in every step's global batch (all ranks, all accumulation
        steps) follows from the labels and the seeded data order alone, so each rank computes it
        without communication; dividing by it makes the step's loss the mean over the whole
        global batch, whatever the number of processes.
        """
        plan, ctx = self.plan, self.ctx
        n_micro = plan.steps_per_epoch * plan.accum_steps
        used = n_micro * plan.micro_batch
        observed = self.observed.sum(axis=1)
        counts = np.zeros(plan.steps_per_epoch, dtype=np.int64)
        batches: list[np.ndarray] = []
        for rank in range(ctx.world_size):
            order = self.train_rows[
                shard_order(len(self.train_rows), epoch, self.config.seed, rank, ctx.world_size)
            ]
            counts += observed[order[:used]].reshape(plan.steps_per_epoch, -1).sum(axis=1)
            if rank == ctx.rank:
                batches = [
                    order[i * plan.micro_batch : (i + 1) * plan.micro_batch] for i in range(n_micro)
                ]
        return batches, counts

    def train_epoch(self, epoch: int, progress: Bar | None = None) -> EpochStats:
        """One pass over this rank's shard of the training rows; returns stats over all ranks.

        The reported loss is the mean BCE per observed label over the epoch's global batches.
        """
        plan, ctx = self.plan, self.ctx
        model = self.train_model
        model.train()
        batches, counts = self.epoch_batches(epoch)
        scale = torch.as_tensor(
            ctx.world_size / np.maximum(counts, 1), dtype=torch.float32, device=self.device
        )
        loader = self.source.loader(batches, self.config.num_workers, self.device.type == "cuda")
        loss_sum = torch.zeros((), device=self.device)
        images = 0
        start = time.perf_counter()
        for i, (rows, pixels, failures) in enumerate(loader):
            self.failures.update(failures)
            step, boundary = divmod(i, plan.accum_steps)[0], (i + 1) % plan.accum_steps == 0
            sync = (
                self._ddp.no_sync()
                if self._ddp is not None and not boundary
                else contextlib.nullcontext()
            )
            with sync:
                x = self._inputs(pixels, rows, epoch)
                with self._autocast():
                    logits = model(x)
                total, _ = masked_bce_sum(
                    logits, self.targets[rows].to(self.device, non_blocking=True), self.pos_weight
                )
                self.scaler.scale(total * scale[step]).backward()
            loss_sum += total.detach()
            images += len(rows)
            if boundary:
                self._optimizer_step()
            if progress is not None:
                progress.update(1)
                show_note(
                    progress, f"{images * ctx.world_size / (time.perf_counter() - start):.0f} img/s"
                )
        totals = all_sum(ctx, torch.stack([loss_sum.float().cpu(), torch.tensor(float(images))]))
        seconds = time.perf_counter() - start
        return EpochStats(
            loss=float(totals[0] / max(int(counts.sum()), 1)),
            images=int(totals[1]),
            seconds=seconds,
        )

    def _optimizer_step(self) -> None:
        if self.config.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    @property
    def lr(self) -> float:
        """The current lr of the full-rate (head) group."""
        return max(group["lr"] for group in self.optimizer.param_groups)

    # ----------------------------------------------------------------------------- prediction
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """(n, L) float32 probabilities for ``rows``; rows that failed to load are NaN rows."""
        return probabilities(self.predict_logits(rows))

    def validation_loss(self, logits: np.ndarray, rows: np.ndarray) -> float:
        """The training loss (weighted, masked BCE; no augmentation) of ``logits`` (n, L) of
        ``rows``: the study's checkpoint criterion. Rows that failed to load (NaN) are left out."""
        ok = ~np.isnan(logits).any(axis=1)
        rows = np.asarray(rows, dtype=np.int64)[ok]
        return float(
            masked_bce(torch.from_numpy(logits[ok]), self.targets[rows], self.pos_weight.cpu())
        )

    @torch.no_grad()
    def predict_logits(self, rows: np.ndarray) -> np.ndarray:
        """(n, L) float32 logits for ``rows``; rows that failed to load are NaN rows.

        Every rank scores a strided share of the rows; the result is gathered on every rank.
        """
        rows = np.asarray(rows, dtype=np.int64)
        local = rows[eval_shard(len(rows), self.ctx.rank, self.ctx.world_size)]
        size = self.config.eval_batch_size or self.plan.micro_batch
        batches = [local[i : i + size] for i in range(0, len(local), size)]
        where = {int(r): k for k, r in enumerate(local)}
        out = torch.full((len(local), len(self.source.metadata.findings)), float("nan"))
        self.model.eval()
        loader = self.source.loader(batches, self.config.num_workers, self.device.type == "cuda")
        for got, pixels, failures in loader:
            self.failures.update(failures)
            if len(got) == 0:
                continue
            with self._autocast():
                logits = self.model(self._inputs(pixels, got))
            out[[where[int(r)] for r in got]] = logits.float().cpu()
        return gather_rows(self.ctx, out, len(rows)).numpy()

    # -------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly; collective (every rank must call it)."""
        rng = capture_rng(self.device)
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {name: gather_stacked(self.ctx, value) for name, value in rng.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; each rank takes its own random states."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        saved_world = int(next(iter(state["rng"].values())).shape[0])
        if saved_world != self.ctx.world_size:
            logger.warning(
                "checkpoint was written by %d processes, this run has %d: data order and random "
                "streams continue, but not exactly as the original run would have",
                saved_world,
                self.ctx.world_size,
            )
        restore_rng(
            {k: v[self.ctx.rank % saved_world] for k, v in state["rng"].items()}, self.device
        )
