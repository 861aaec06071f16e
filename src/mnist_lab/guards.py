"""What ends a run cleanly and keeps its files whole: checkpoints written atomically, a stop on a non-finite
loss, and on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.plugins import TorchCheckpointIO

from mnist_lab.errors import Interrupted, TrainingError
from mnist_lab.runs import RunDir, atomic_path, continue_how, in_sweep, shown


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer (the Trainer's plugin for every checkpoint it saves), writing to a
    temporary name in the checkpoint's own folder and renaming it into place (runs.atomic_path).

    Lightning's own writer goes through fsspec's transaction, whose temporary file is in the system's temp
    folder: where the run folder is on another filesystem the final move is a copy, which a full disk, a
    quota or a kill stops half-way, destroying the previous checkpoint. A rename in one folder cannot.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            try:
                torch.save(checkpoint, f)  # a file object: a full disk surfaces as OSError (ENOSPC)
            except RuntimeError as err:
                if isinstance(err.__context__, OSError):  # torch's zip writer, closing, hid the OSError
                    raise err.__context__ from None
                raise


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
        kept = f"Kept: {shown(best)} (the best so far)" if best else "No checkpoint was written yet."
        raise TrainingError(
            f"loss became non-finite ({loss:g}) at step {step} (epoch {trainer.current_epoch + 1}): "
            f"stopped; lower optimizer.lr or set trainer.gradient_clip_val. {kept}"
        )


class GracefulInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during fit: finish the current step (on the fast path: the current chunk of K
    steps), save checkpoints/last.ckpt (mid-epoch, with the loop's position), and stop with a one-line
    message saying how to resume.

    During an epoch's last training step the epoch is finished first (validation, its metrics and
    checkpoints) and the run stops as the next epoch starts: Lightning, resuming from a checkpoint
    saved after an epoch's last step, counts the epoch as done and never validates it. After the last
    epoch (a signal during its validation or checkpoint) it stops as training ends, before the test.

    A second Ctrl-C stops at once, saving nothing more, and says what there is to resume from. Under DDP
    Lightning's own SIGTERM handling is left in place (the ranks must agree on where to stop). A signal the
    process was started with ignored (a shell starts a background job with SIGINT ignored) stays ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.received: int | None = None
        self.previous: dict[int, object] = {}

    def on_train_start(self, trainer, module) -> None:
        if trainer.world_size > 1 or not hasattr(signal, "SIGTERM"):
            return
        if threading.current_thread() is not threading.main_thread():
            return  # a stacked run's member, in a thread: the stack takes the signals for it (mnist_lab.stack)
        self.trainer = trainer
        for sig in self.SIGNALS:
            if signal.getsignal(sig) is signal.SIG_IGN:  # e.g. SIGINT of a background job (`cmd &`): keep ignoring it
                continue
            self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            self._restore()
            run = RunDir(self.run_dir)
            then = (f"resume from {run.last_ckpt.relative_to(run.path)} with: python -m mnist_lab.train "
                    f"resume={shown(run.path)}") if run.last_ckpt.is_file() else "no checkpoint yet: start it again"
            if in_sweep():  # a job of a sweep or study
                then = "the sweep's command continues it"
            raise Interrupted(f"SIGINT received again: stopped at once in epoch {self.trainer.current_epoch + 1}, "
                              f"saving nothing more; {then}")
        self.received = signum

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.received is not None and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.stop(trainer, f"epoch {trainer.current_epoch + 1}")  # epochs count from 1 in what a run prints

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.received is not None:  # last.ckpt is the one the epoch's end just wrote
            self.stop(trainer, f"at the end of epoch {trainer.current_epoch}", save=False)

    def stop(self, trainer, where: str, save: bool = True) -> None:
        name = signal.Signals(self.received).name
        run = RunDir(self.run_dir)
        if save:  # the full state, loops included; rank 0 writes (AtomicCheckpointIO)
            trainer.save_checkpoint(run.last_ckpt, weights_only=False)
        self._restore()
        raise Interrupted(
            f"{name} received: stopped after step {trainer.global_step} ({where}) and "
            f"saved {run.last_ckpt.relative_to(run.path)}; {continue_how(run)}"
        )

    def on_train_end(self, trainer, module) -> None:
        if self.received is not None:  # came after the last epoch's last step: its last.ckpt is written
            self.stop(trainer, f"at the end of epoch {trainer.current_epoch}", save=False)
        self._restore()

    def on_exception(self, trainer, module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class ProcessGroupEnd(L.Callback):
    """Ends the process group before its processes exit: a barrier, then destroy_process_group.

    Lightning leaves a DDP run's gloo process group to an atexit handler; a process exiting while another's
    connection is still open now and then aborts (SIGABRT, "terminate called without an active exception"),
    which fails the run after its work was done. ddp_spawn's workers (trainer=ddp_cpu with
    trainer.strategy=ddp_spawn) exit after each stage, fit and test; processes that share the run (ddp
    re-launched by Lightning, started by Slurm or torchrun) after testing, train()'s last stage.
    """

    def teardown(self, trainer, pl_module, stage: str) -> None:
        spawned = getattr(trainer.strategy, "_start_method", "popen") != "popen"
        if (spawned or stage == "test") and dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
