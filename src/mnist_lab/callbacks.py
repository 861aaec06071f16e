"""Callbacks that record a run: seconds per epoch, chunks in the progress bar, the run's figures.

matplotlib (mnist_lab.plots) is imported only when a figure is drawn, at the end of fit or test.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from mnist_lab.data import MEAN, STD
from mnist_lab.runs import RunDir


class EpochTime(L.Callback):
    """Logs `time/epoch_s`: wall seconds of each training epoch (validation excluded), and keeps them
    in `seconds`. On a GPU it waits for the device at both ends, so queued work counts."""

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
        module.log("time/epoch_s", self.seconds[-1], on_epoch=True, reduce_fx="max")


class ChunkProgressBar(TQDMProgressBar):
    """Lightning's progress bar, counting what the fast path trains per training_step: chunks of K steps."""

    def init_train_tqdm(self):
        bar = super().init_train_tqdm()
        bar.unit = " chunks"
        return bar

    def on_train_epoch_start(self, trainer, module) -> None:
        super().on_train_epoch_start(trainer, module)
        steps = trainer.datamodule.steps_per_item() if trainer.datamodule is not None else None
        if steps and self.train_progress_bar is not None:
            self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch} (chunks of {steps} steps)")


class RunFigures(L.Callback):
    """At the end of testing, the run's figures (mnist_lab.figures): history.png, confusion_matrix.png,
    per_class.png, mistakes.png, and the logger images test/predictions (the first 32 test digits,
    predicted (true), mistakes in red) and test/confusion_matrix. Gathers the test set's predictions
    as numpy arrays, keeps them in the run folder (test_outputs.npz, for `python -m mnist_lab.figures`)
    and draws: at once, or beside the next job of a sweep run in this process.
    """

    def __init__(self, run_dir: Path, chosen: Mapping | None = None, n: int = 32, normalized: bool = True):
        self.run, self.chosen, self.n = RunDir(run_dir), dict(chosen or {}), n  # chosen: the logger config
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
        from mnist_lab import figures

        for logger in trainer.loggers:
            logger.save()  # what fit logged, for history.png
        payload = {
            "run_dir": str(self.run.path), "chosen": self.chosen, "step": trainer.global_step,
            "first": torch.cat(self.first)[: self.n].numpy(), "labels": torch.cat(self.labels).numpy(),
            "probs": torch.cat(self.probs).numpy(), "wrong_images": torch.cat(self.wrong_images).numpy(),
            "wrong_index": torch.cat(self.wrong_index).numpy(), "confusion": confusion.numpy(),
        }
        figures.keep_payload(payload)
        figures.draw(payload, background=trainer.world_size == 1 and figures.in_sweep_process())
