"""Callbacks that end a run cleanly: on a non-finite loss, and on Ctrl-C or SIGTERM."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import lightning as L
import torch

from mnist_lab.errors import Interrupted, TrainingError
from mnist_lab.runs import RunDir, atomic_path


def save_atomically(trainer: L.Trainer, path: Path) -> None:
    """trainer.save_checkpoint through runs.atomic_path: a kill mid-write leaves the old file. Every rank
    calls it; rank 0 writes."""
    with atomic_path(path, commit=trainer.is_global_zero) as tmp:
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state: optimizer and loops included


class NonFiniteGuard(L.Callback):
    """Stops training at the first step whose loss is NaN or infinite, naming the step.

    The check stays on the device and is read every 50 steps on a GPU, so the run does not sync with
    the host each step (on CPU every step: reading the loss is free there); the error still names the
    first bad step. The best checkpoint written so far is kept.
    """

    def on_train_start(self, trainer, module) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=module.device)
        self.period = 1 if module.device.type == "cpu" else 50

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        step = trainer.global_step  # optimizer steps taken, this one included
        if self.period == 1:  # on CPU reading the loss costs nothing
            if not math.isfinite(loss.item()) and int(self.first_bad) < 0:
                self.first_bad.fill_(step)
                self.check(trainer, loss)
            return
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.tensor(step, device=loss.device), self.first_bad)
        if step % self.period == 0 or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.check(trainer, loss)

    def check(self, trainer, loss: torch.Tensor) -> None:
        first = int(self.first_bad)
        if first < 0:
            return
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        kept = f"the best checkpoint so far is kept: {best}" if best else "no checkpoint was written yet"
        raise TrainingError(
            f"loss became non-finite ({float(loss):g}) at step {first} (epoch {trainer.current_epoch}): "
            f"training stopped; lower optimizer.lr or set trainer.gradient_clip_val; {kept}"
        )


class GracefulInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during fit: finish the current step, save checkpoints/last.ckpt (mid-epoch,
    with the loop's position), and stop with a one-line message saying how to resume.

    A second Ctrl-C stops at once. Under DDP Lightning's own SIGTERM handling is left in place
    (the ranks must agree on where to stop).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def on_train_start(self, trainer, module) -> None:
        if trainer.world_size > 1 or not hasattr(signal, "SIGTERM"):
            return
        for sig in self.SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signum

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.received is None:
            return
        name = signal.Signals(self.received).name
        path = RunDir(self.run_dir).last_ckpt
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(trainer, path)
        self._restore()
        raise Interrupted(
            f"{name} received: stopped after step {trainer.global_step} (epoch {trainer.current_epoch}) and "
            f"saved {path}; resume with: python -m mnist_lab.train resume={self.run_dir}"
        )

    def on_train_end(self, trainer, module) -> None:
        self._restore()

    def on_exception(self, trainer, module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
