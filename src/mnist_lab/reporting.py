"""Callbacks that record a run: seconds per epoch, a line per epoch, the progress bar (chunks of K steps), the
run's figures.

matplotlib (mnist_lab.drawing) is imported only when a figure is drawn, at the end of fit or test.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar

from mnist_lab import figures, study
from mnist_lab.console import log
from mnist_lab.data import MEAN, STD
from mnist_lab.errors import ObjectiveError, deferred_signals
from mnist_lab.runs import RunDir, disk_full


class EpochTime(L.Callback):
    """Logs `train/epoch_s`: wall seconds of each training epoch (validation excluded), and keeps them
    in `seconds`. On a GPU it waits for the device at both ends, so queued work counts."""

    TAG = "train/epoch_s"  # beside the learning curves in TensorBoard; not part of a run's result (a time)

    def __init__(self):
        self.seconds: list[float] = []

    def _now(self, module) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_start(self, trainer, module) -> None:
        self.start = self._now(module)  # a run resumed mid-epoch starts here, not at an epoch start

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start = self._now(module)

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds.append(self._now(module) - self.start)
        module.log(self.TAG, self.seconds[-1], on_epoch=True, reduce_fx="max")


class FitRecord(L.Callback):
    """The last epoch's train/* and val/* means, kept in every checkpoint (a callback's state), for result.yaml.

    A run restarted from a checkpoint saved after its last epoch (killed before or during its test) trains
    nothing more, so its fit logs no metrics: they come back from the checkpoint it restarted from."""

    def __init__(self):
        self.restored: dict[str, float] = {}
        self.trainer = None

    def setup(self, trainer, module, stage: str) -> None:
        self.trainer = trainer

    def fitted(self) -> dict[str, float]:
        """This fit's latest train/* and val/* means, over those of the checkpoint it started from."""
        metrics = self.trainer.callback_metrics if self.trainer is not None else {}
        return {**self.restored, **{k: float(v) for k, v in metrics.items()
                                    if k.startswith(("train/", "val/")) and k != EpochTime.TAG}}  # not its seconds

    def state_dict(self) -> dict:
        return {"metrics": self.fitted()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = {k: float(v) for k, v in state_dict.get("metrics", {}).items()}


class EpochLines(Checkpoint):
    """One line per epoch, on the console and in train.log:

        epoch 2/5: train loss 0.0721 acc 0.9781, val loss 0.0858 acc 0.9742, 1.9 s

    Epochs count from 1 here, in the progress bar, the messages and history.png. It is a Checkpoint to
    Lightning only so that its on_train_epoch_end runs after LightningModule.on_train_epoch_end (which logs
    train/*) and after the epoch's checkpoints are written: a line printed is an epoch saved. It saves nothing.
    """

    def on_train_epoch_end(self, trainer, module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        parts = [f"{stage} loss {float(metrics[f'{stage}/loss']):.4f} acc {float(metrics[f'{stage}/acc']):.4f}"
                 for stage in ("train", "val") if f"{stage}/loss" in metrics and f"{stage}/acc" in metrics]
        if EpochTime.TAG in metrics:
            parts.append(f"{float(metrics[EpochTime.TAG]):.1f} s")
        log.info(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {', '.join(parts)}")


class RunProgressBar(TQDMProgressBar):
    """Lightning's live bar (in a terminal), counting what the fast path trains per training_step, chunks of
    K steps, and epochs from 1 like the rest of the run's output; a run resumed mid-epoch shows that epoch
    with its total; and the bars are closed before an error's line is printed, so the last thing on the
    screen is the error, not a stale bar."""

    def __init__(self, steps: int | None = None):  # the run's FastPlan.steps: K batches per training_step
        super().__init__()
        self.steps = steps

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        if self.steps:
            bar.unit = " chunks"
        return bar

    def _describe(self, trainer) -> None:
        chunks = f" (chunks of {self.steps} steps)" if self.steps else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}{chunks}")

    def on_train_start(self, trainer, module) -> None:
        super().on_train_start(trainer, module)
        if trainer.fit_loop.restarted_mid_epoch:  # Lightning skips on_train_epoch_start for this epoch
            self.train_progress_bar.reset(total=self.total_train_batches)
            self._describe(trainer)

    def on_train_epoch_start(self, trainer, module) -> None:
        super().on_train_epoch_start(trainer, module)
        self._describe(trainer)

    def on_exception(self, trainer, module, exception) -> None:
        for bar in (self._train_progress_bar, self._val_progress_bar, self._test_progress_bar):
            if bar is not None:
                bar.close()


class RunFigures(L.Callback):
    """At the end of testing, the run's figures (mnist_lab.figures): history.png, confusion_matrix.png,
    per_class.png, mistakes.png, and the logger images test/predictions (the first 32 test digits,
    predicted (true), mistakes in red) and test/confusion_matrix. Gathers the test set's predictions
    as numpy arrays, keeps them in the run folder (test_outputs.npz, for `python -m mnist_lab.figures`)
    and draws: at once, or beside the next job of a sweep run in this process. A full disk on the way is kept
    in `failed`, for train() to say after the test's line (and not to record the run: its re-run tests again).
    """

    def __init__(self, run_dir: Path, chosen: Mapping | None = None, n: int = 32, normalized: bool = True):
        self.run, self.chosen, self.n = RunDir(run_dir), dict(chosen or {}), n  # chosen: the logger config
        self.failed: Exception | None = None
        self.mean, self.std = (MEAN, STD) if normalized else (0.0, 1.0)  # to undo data.normalize

    def on_test_epoch_start(self, trainer, module) -> None:
        self.first, self.labels, self.probs, self.wrong_images, self.wrong_index = [], [], [], [], []
        self.seen = 0

    def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is None:
            return
        x, y = batch
        probs = torch.softmax(outputs.detach().float(), 1).cpu()
        y = y.detach().cpu()
        pixels = (x.detach().cpu().reshape(-1, 28, 28) * self.std + self.mean).clamp(0, 1).mul(255).to(torch.uint8)
        if sum(len(f) for f in self.first) < self.n:
            self.first.append(pixels)
        wrong = probs.argmax(1) != y
        self.wrong_images.append(pixels[wrong])
        self.wrong_index.append(torch.nonzero(wrong).flatten() + self.seen)
        self.labels.append(y)
        self.probs.append(probs)
        self.seen += len(y)

    def on_test_epoch_end(self, trainer, module) -> None:
        confusion = module.test_confusion.compute().cpu()  # synced across ranks
        module.test_confusion.reset()
        if not trainer.is_global_zero or not self.labels:
            return

        for logger in trainer.loggers:
            logger.save()  # what fit logged, for history.png
        payload = {
            "run_dir": str(self.run.path), "chosen": self.chosen, "step": trainer.global_step,
            "first": torch.cat(self.first)[: self.n].numpy(), "labels": torch.cat(self.labels).numpy(),
            "probs": torch.cat(self.probs).numpy(), "wrong_images": torch.cat(self.wrong_images).numpy(),
            "wrong_index": torch.cat(self.wrong_index).numpy(), "confusion": confusion.numpy(),
        }
        try:
            figures.keep_payload(payload)
            figures.draw(payload, background=trainer.world_size == 1 and figures.in_sweep_process())
        except Exception as err:
            if disk_full(err) is None:
                raise
            self.failed = err


def study_callbacks(run_dir: Path, chosen: Mapping | None = None) -> list[L.Callback]:
    """[OptunaTrial] when this run is a trial of an Optuna study (hydra/sweeper=optuna), else []. chosen: the
    run's logger config (a pruned trial draws its history.png from what they logged)."""
    trial = study.current_trial()
    if trial is None:
        return []
    return [OptunaTrial(trial, run_dir, chosen)]


class OptunaTrial(L.Callback):
    """The trial's side of an Optuna study (mnist_lab.study).

    After each validation it reports the objective metric (hydra.sweeper.metric) as the value after that many
    epochs and asks the pruner. A pruned trial stops at the end of that epoch (never after the last one: that
    would save nothing), is told pruned, writes trial.yaml saying so and history.png, and ends with
    optuna.TrialPruned, untested.
    A trial that trains to the end is told complete with the metric's best value over its epochs and the test
    metrics once its run is recorded (finish(), after result.yaml): a study never counts a trial finished whose
    run folder is not. Telling and trial.yaml go together: a signal waits for both (errors.deferred_signals).
    Only rank 0 talks to the study; the ranks agree on pruning.
    """

    def __init__(self, link, run_dir: Path, chosen: Mapping | None = None):
        self.link, self.run_dir, self.chosen = link, Path(run_dir), dict(chosen or {})
        self.values: dict[int, float] = {}
        self.pruned_at: int | None = None
        self.study = self.trial = None

    def on_fit_start(self, trainer, module) -> None:
        if trainer.is_global_zero and self.trial is None:
            self.study, self.trial = self.link.connect()
            self.trial.set_user_attr("run", str(self.run_dir))

    def on_validation_end(self, trainer, module) -> None:
        metric = self.link.metric
        if metric not in trainer.callback_metrics:  # checked at the sanity check already, when there is one
            logged = ", ".join(sorted(trainer.callback_metrics))
            raise ObjectiveError(f"hydra.sweeper.metric={metric}: the run never logs it after validation; "
                              f"choose one of {logged}")
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1
        prune = False
        if trainer.is_global_zero:
            self.values[epoch] = float(trainer.callback_metrics[metric])
            self.trial.report(self.values[epoch], epoch)
            prune = epoch < trainer.max_epochs and self.trial.should_prune()
        if trainer.world_size > 1:
            prune = trainer.strategy.broadcast(prune)
        if prune:
            self.pruned_at = epoch
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, module) -> None:
        if not self.values and trainer.is_global_zero:  # validation comes before this hook
    
            raise ObjectiveError(f"hydra.sweeper.metric={self.link.metric}: the run never logs it, since it does not "
                              "validate (data.val_size=0 or trainer.limit_val_batches=0): give it validation data")

    def on_fit_end(self, trainer, module) -> None:
        if self.pruned_at is None:
            return
        import optuna

        if trainer.is_global_zero:
            self.tell(state=optuna.trial.TrialState.PRUNED)
            for logger in trainer.loggers:
                logger.save()  # what fit logged, for history.png
            figures.draw_history(self.run_dir, self.chosen)
        value = self.values.get(self.pruned_at, float("nan"))  # rank 0's
        raise optuna.TrialPruned(f"trial {self.link.number} pruned after epoch {self.pruned_at} of "
                                 f"{trainer.max_epochs}: {self.link.metric}={value:.4f}")

    def on_test_end(self, trainer, module) -> None:
        if not trainer.is_global_zero or not self.values:
            return
        for k, v in trainer.callback_metrics.items():
            if k.startswith("test/"):
                self.trial.set_user_attr(k, float(v))

    def finish(self) -> None:
        """Tell the study the trial is complete (train() calls it after the test, once result.yaml is written)."""
        if self.values:  # rank 0's
            self.tell((max if self.link.direction == "maximize" else min)(self.values.values()))

    def tell(self, value: float | None = None, state=None) -> None:
        """Tell the study how the trial ended, and write its trial.yaml: together (a signal waits for both)."""
        with deferred_signals():
            frozen = self.study.tell(self.trial, value, state=state)
            study.write_record(self.run_dir, frozen, self.link.metric)
