"""Callbacks that end a run cleanly: on a non-finite loss, and on Ctrl-C or SIGTERM."""

from __future__ import annotations

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

    A training_step returns one loss, or one per step of a chunk (the fast path). On the CPU they are
    read at once. On a GPU the check stays on the device and is read every `period` steps and at the
    end of each epoch, so the host never waits for the GPU step by step; the error still names the
    first bad step. The best checkpoint written so far is kept.
    """

    def __init__(self, period: int = 50):
        self.period = period

    def on_train_start(self, trainer, module) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.long, device=module.device)
        self.bad_loss = torch.zeros((), device=module.device)
        self.read_at = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        losses = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach().reshape(-1)
        first_step = trainer.global_step - len(losses) + 1  # the step that produced losses[0]
        if losses.device.type == "cpu":
            if not torch.isfinite(losses).all():
                i = int(torch.nonzero(~torch.isfinite(losses))[0])
                self.stop(trainer, first_step + i, float(losses[i]))
            return
        bad = ~torch.isfinite(losses)
        steps = torch.arange(first_step, first_step + len(losses), device=losses.device)
        first = torch.where(bad, steps, torch.iinfo(torch.long).max).min()
        new = bad.any() & (self.first_bad < 0)
        self.first_bad = torch.where(new, first, self.first_bad)
        self.bad_loss = torch.where(new, losses[(first - first_step).clamp(0, len(losses) - 1)], self.bad_loss)
        if (trainer.global_step - self.read_at >= self.period
                or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            self.read_at = trainer.global_step
            if int(self.first_bad) >= 0:
                self.stop(trainer, int(self.first_bad), float(self.bad_loss))

    def stop(self, trainer, step: int, loss: float) -> None:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        kept = f"the best checkpoint so far is kept: {best}" if best else "no checkpoint was written yet"
        raise TrainingError(
            f"loss became non-finite ({loss:g}) at step {step} (epoch {trainer.current_epoch}): "
            f"training stopped; lower optimizer.lr or set trainer.gradient_clip_val; {kept}"
        )


class GracefulInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during fit: finish the current step (on the fast path: the current chunk of K
    steps), save checkpoints/last.ckpt (mid-epoch, with the loop's position), and stop with a one-line
    message saying how to resume.

    During an epoch's last training step the epoch is finished first (validation, its metrics and
    checkpoints) and the run stops as the next epoch starts: Lightning, resuming from a checkpoint
    saved after an epoch's last step, counts the epoch as done and never validates it.

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
        if self.received is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.stop(trainer, f"epoch {trainer.current_epoch}")

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.received is not None:  # last.ckpt is the one the epoch's end just wrote
            self.stop(trainer, f"at the end of epoch {trainer.current_epoch - 1}", save=False)

    def stop(self, trainer, where: str, save: bool = True) -> None:
        name = signal.Signals(self.received).name
        path = RunDir(self.run_dir).last_ckpt
        if save:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_atomically(trainer, path)
        self._restore()
        raise Interrupted(
            f"{name} received: stopped after step {trainer.global_step} ({where}) and "
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
