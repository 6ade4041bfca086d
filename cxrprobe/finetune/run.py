"""One fine-tuning run from start (or a checkpoint) to the test predictions.

:class:`FinetuneRun` refuses patient leakage between the splits (unless ``allow_leakage``),
plans the batches, builds the :class:`Trainer`, restores a checkpoint when
resuming, runs the epochs with validation-split model selection (by mean AUROC or, as the study's
code, by the lowest validation loss) and early stopping, and at the
end scores the validation and test splits with the best weights. Rank 0 writes every file; all
ranks take part in training, validation and the gathers. Resuming a finished run changes nothing
(its record keeps how it was trained, e.g. under torchrun); other settings are refused.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrprobe.cache.source import ImageSource
from cxrprobe.data.targets import evaluation_targets, fittable, positive_weights, to_targets
from cxrprobe.devices import DistContext, barrier
from cxrprobe.errors import ConfigError, DataFormatError
from cxrprobe.finetune import outputs
from cxrprobe.finetune.checkpoint import load_checkpoint, save_checkpoint
from cxrprobe.finetune.distributed import gather_objects
from cxrprobe.finetune.plan import check_leakage, make_plan, split_rows
from cxrprobe.finetune.trainer import Plan, Trainer, probabilities
from cxrprobe.progress import ProgressFactory, start_bar
from cxrprobe.provenance import atomic_write_json, write_run_record

logger = logging.getLogger(__name__)

FINISHED_OUTPUTS = ("summary.json", "predictions.json", "val_predictions.json", "run.json")

# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = (
    "stop_after",
    "num_workers",
    "compile",
    "eval_batch_size",
    "device",
    "patience",
    "recipe_filled",  # which settings were explicit: the values themselves are compared
    # Leakage is fixed by the rows (in the data fingerprint): leaky rows are refused without it
    # at every invocation, and it changes nothing on rows without leakage.
    "allow_leakage",
)
# Settings added later, with the value that runs saved before them implicitly had.
_ADDED_SETTINGS = {
    "uncertain": "ignore",
    "blank": "missing",
    "findings": None,
    "recipe": "modern",
    "rotate_mode": "bilinear",
    "select_by": "auroc",
}


@dataclass
class RunState:
    """Progress of a run across invocations (stored in ``last.pt``)."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_mean_auroc: float = -math.inf  # of the best epoch
    best_val_loss: float = math.inf  # of the best epoch
    bad_epochs: int = 0
    finished: bool = False
    stopped_early: bool = False


@dataclass
class FinetuneResult:
    """What a run produced (``summary.json`` holds the same summary)."""

    out_dir: Path
    finished: bool
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    unchanged: bool = False  # a resumed run that had finished: its folder was left as it was


def check_resumable(saved: dict[str, Any], current: dict[str, Any], checkpoint: Path) -> None:
    """Refuse to continue a run with other settings or other data, naming what differs."""
    keys = sorted((set(saved) | set(current)) - set(RESUMABLE_CHANGES))
    saved = {**_ADDED_SETTINGS, **saved}
    diffs = [
        f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ConfigError(
            f"{checkpoint} was made with other settings ({'; '.join(diffs[:4])}); "
            "rerun with the original options, or pass --overwrite to start again"
        )


class FinetuneRun:
    """A run folder being filled: plan, train with validation, then test predictions."""

    def __init__(
        self,
        config: Any,
        source: ImageSource,
        out_dir: Path,
        ctx: DistContext,
        progress: ProgressFactory | None = None,
    ) -> None:
        self.config, self.source, self.out_dir, self.ctx = config, source, Path(out_dir), ctx
        self.progress = progress if ctx.is_main else None
        self.last_path = self.out_dir / "checkpoints" / "last.pt"
        self.best_path = self.out_dir / "checkpoints" / "best.pt"
        self.findings = tuple(source.metadata.findings)

    def execute(self, resume: bool, overwrite: bool) -> FinetuneResult:
        config, ctx = self.config, self.ctx
        rows = split_rows(self.source, config)
        shared = check_leakage(self.source, rows, config.allow_leakage)
        identity = {**config.to_dict(), "dataset_fingerprint": self.source.fingerprint()}
        saved = None
        if resume and not overwrite and self.last_path.is_file():
            saved = load_checkpoint(self.last_path)
            check_resumable(saved["identity"], identity, self.last_path)
            done = self._finished_run(saved)
            if done is not None:
                return done
        plan = make_plan(config, len(rows["train"]), ctx.world_size, ctx.device.type)
        weights = self._class_weights(rows["train"])
        self._prepare_folder(resume, overwrite)
        trainer = Trainer(config, self.source, ctx, plan, rows["train"], weights)
        state = RunState()
        if saved is not None:
            trainer.load_state_dict(saved["trainer"])
            state = RunState(**saved["run"])
            logger.info("resuming %s at epoch %d", self.out_dir, state.next_epoch + 1)
        resolved = self._resolved(plan, trainer, rows, weights, shared)
        if ctx.is_main:
            write_run_record(self.out_dir, "cxrprobe finetune", resolved)
        ran = 0
        while not state.finished and (config.stop_after is None or ran < config.stop_after):
            self._epoch(trainer, state, rows, identity)
            ran += 1
        if not state.finished:
            return FinetuneResult(
                self.out_dir, False, self._summary(state, plan, None, None, {}), state.history
            )
        return self._finish(trainer, state, plan, rows, resolved)

    def _finished_run(self, saved: dict[str, Any]) -> FinetuneResult | None:
        """The result of the finished run ``saved`` comes from, when its outputs are all there
        (then nothing is rewritten: run.json keeps e.g. the world size it was trained with);
        None when there is something left to do."""
        state = RunState(**saved["run"])
        written = [self.out_dir / name for name in FINISHED_OUTPUTS]
        if not state.finished or not all(path.is_file() for path in written):
            return None
        try:
            summary = json.loads((self.out_dir / "summary.json").read_text())
        except (OSError, ValueError):  # damaged: finishing again rewrites it
            return None
        if not isinstance(summary, dict) or summary.get("finished") is not True:
            return None
        logger.info(
            "%s holds this run finished already (%d epochs, %s process(es)); left as it is",
            self.out_dir,
            state.next_epoch,
            summary.get("world_size"),
        )
        return FinetuneResult(self.out_dir, True, summary, state.history, unchanged=True)

    def _class_weights(self, train_rows: np.ndarray) -> np.ndarray:
        """(L,) ``pos_weight`` on the training split (ones with ``class_weights`` off)."""
        if not self.config.class_weights:
            return np.ones(len(self.findings), dtype=np.float32)
        labels = self.source.metadata.labels[train_rows]
        targets = to_targets(labels, self.config.uncertain, self.config.blank)[0]
        one_class = ~fittable(targets)
        if one_class.any():
            logger.warning(
                "pos_weight set to 1 for %s: only one class among the training labels",
                ", ".join(np.asarray(self.findings)[one_class]),
            )
        return positive_weights(targets).astype(np.float32)

    def _prepare_folder(self, resume: bool, overwrite: bool) -> None:
        if overwrite:
            if self.ctx.is_main:
                outputs.clear_outputs(self.out_dir)
            barrier(self.ctx)
        elif self.last_path.is_file() and not resume:
            raise ConfigError(
                f"{self.out_dir} already holds a fine-tuning run; pass --resume to continue it or --overwrite to start again"
            )
        if self.ctx.is_main:
            self.last_path.parent.mkdir(parents=True, exist_ok=True)

    def _resolved(
        self,
        plan: Plan,
        trainer: Trainer,
        rows: dict[str, np.ndarray],
        weights: np.ndarray,
        shared: list[str],
    ) -> dict[str, Any]:
        """The resolved config recorded in ``run.json`` and every predictions file (``shared``:
        the patients ``allow_leakage`` let into several splits)."""
        return {
            **self.config.to_dict(),
            "plan": asdict(plan),
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "model": trainer.spec.to_dict(),
            "dataset": {
                **self.source.description,
                "fingerprint": self.source.fingerprint(),
                "rows": {k: int(v.size) for k, v in rows.items()},
                "patients_in_several_splits": len(shared),
            },
            "findings": list(self.findings),
            "pos_weight": outputs.json_floats(weights, self.findings),
            "known_failures": len(self.source.known_failures),
        }

    def _epoch(
        self,
        trainer: Trainer,
        state: RunState,
        rows: dict[str, np.ndarray],
        identity: dict[str, Any],
    ) -> None:
        """Train one epoch, validate on the validation split, update the best model, checkpoint."""
        from cxrprobe.stats.auroc import auroc_report

        config, epoch = self.config, state.next_epoch
        bar = start_bar(
            self.progress,
            trainer.plan.steps_per_epoch * trainer.plan.accum_steps,
            f"epoch {epoch + 1}/{config.epochs}",
        )
        try:
            stats = trainer.train_epoch(epoch, bar)
        finally:
            bar.close()
        if not math.isfinite(stats.loss):
            raise DataFormatError(
                f"training diverged: loss {stats.loss} in epoch {epoch + 1}; lower --lr, add --clip-grad or use --precision fp32"
            )
        logits = trainer.predict_logits(rows["val"])
        ok = ~np.isnan(logits).any(axis=1)
        targets = evaluation_targets(self.source.metadata.labels[rows["val"]][ok])
        report = auroc_report(targets, probabilities(logits[ok]))
        val_loss = trainer.validation_loss(logits, rows["val"])
        if config.select_by == "loss":
            improved = bool(np.isfinite(val_loss) and val_loss < state.best_val_loss)
        else:
            improved = bool(np.isfinite(report.mean) and report.mean > state.best_val_mean_auroc)
        if improved:
            state.best_epoch = epoch + 1
            state.best_val_mean_auroc = report.mean
            state.best_val_loss = val_loss
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1
        state.history.append(
            {
                "epoch": epoch + 1,
                "train_loss": stats.loss,
                "val_mean_auroc": outputs.finite_or_none(report.mean),
                "val_loss": outputs.finite_or_none(val_loss),
                "selection_split": "val",
                "is_best": improved,
                "lr": trainer.lr,
                "images_per_s": stats.images_per_s,
                "epoch_seconds": stats.seconds,
                "val_auroc": outputs.json_floats(report.values, self.findings),
            }
        )
        state.next_epoch = epoch + 1
        state.stopped_early = bool(
            config.patience
            and state.bad_epochs >= config.patience
            and state.next_epoch < config.epochs
        )
        state.finished = state.stopped_early or state.next_epoch >= config.epochs
        checkpoint = trainer.state_dict()  # collective: gathers every rank's random states
        if self.ctx.is_main:
            if improved:
                save_checkpoint(
                    self.best_path,
                    {
                        "model": trainer.model.state_dict(),
                        "epoch": epoch + 1,
                        "val_mean_auroc": report.mean,
                        "val_loss": val_loss,
                        "select_by": config.select_by,
                        "selection_split": "val",
                        "findings": list(self.findings),
                        "model_spec": trainer.spec.to_dict(),
                    },
                )
            save_checkpoint(
                self.last_path,
                {
                    "trainer": checkpoint,
                    "run": asdict(state),
                    "identity": identity,
                    "data_order": {
                        "seed": config.seed,
                        "next_epoch": state.next_epoch,
                        "world_size": self.ctx.world_size,
                    },
                },
            )
            outputs.write_log(self.out_dir / "log.csv", state.history, self.findings)
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val mean AUROC %.4f",
            epoch + 1,
            stats.loss,
            val_loss,
            report.mean,
        )

    def _finish(
        self,
        trainer: Trainer,
        state: RunState,
        plan: Plan,
        rows: dict[str, np.ndarray],
        resolved: dict[str, Any],
    ) -> FinetuneResult:
        """Score val and test with the best weights; rank 0 writes predictions and the summary."""
        from cxrprobe.stats.auroc import auroc_report
        from cxrprobe.stats.predictions import write_predictions

        barrier(self.ctx)
        if state.best_epoch is None:
            raise DataFormatError(
                f"no epoch had a defined validation AUROC in {self.out_dir}; check the validation labels"
            )
        trainer.model.load_state_dict(load_checkpoint(self.best_path)["model"])
        val_scores = trainer.predict(rows["val"])
        test_scores = trainer.predict(rows["test"])
        failures: dict[int, str] = dict(self.source.known_failures)
        for part in gather_objects(self.ctx, trainer.failures):
            failures.update(part)
        extra = {
            "best_epoch": state.best_epoch,
            "selection_split": "val",
            "select_by": self.config.select_by,
            "val_mean_auroc": state.best_val_mean_auroc,
            "val_loss": state.best_val_loss,
        }
        val_pred = outputs.predictions(
            self.source,
            rows["val"],
            val_scores,
            outputs.prediction_provenance(resolved, "val", extra),
        )
        test_pred = outputs.predictions(
            self.source,
            rows["test"],
            test_scores,
            outputs.prediction_provenance(resolved, "test", extra),
        )
        val_report = auroc_report(val_pred.targets, val_pred.scores)
        test_report = auroc_report(test_pred.targets, test_pred.scores)
        summary = self._summary(state, plan, val_report, test_report, failures)
        if self.ctx.is_main:
            write_predictions(val_pred, self.out_dir / "val_predictions.json")
            write_predictions(test_pred, self.out_dir / "predictions.json")
            atomic_write_json(
                self.out_dir / "failures.json", outputs.failure_report(self.source, failures)
            )
            atomic_write_json(self.out_dir / "summary.json", summary)
        return FinetuneResult(self.out_dir, True, summary, state.history)

    def _summary(
        self,
        state: RunState,
        plan: Plan,
        val_report: Any,
        test_report: Any,
        failures: dict[int, str],
    ) -> dict[str, Any]:
        return outputs.summary(
            state,
            self.config,
            plan,
            self.ctx.world_size,
            self.out_dir,
            self.findings,
            val_report,
            test_report,
            len(failures),
        )
