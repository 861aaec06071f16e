"""A finished run's figures, drawn from plain arrays: in the run's own process, or beside a sweep.

    python -m mnist_lab.figures outputs/runs/<time>          # draw a run's figures again
    python -m mnist_lab.figures outputs/sweeps/<time> ...    # every finished run under these folders

Writes, for each run (one whose test_outputs.npz the test left in its folder):
    history.png, confusion_matrix.png, per_class.png, mistakes.png   in the run folder
    test/predictions, test/confusion_matrix                          images in the run's loggers (once: a
                                                                     redraw logs them where confusion_matrix.png
                                                                     is missing, the drawing cut short before)

reporting.RunFigures gathers what the test set gave (numpy arrays, a few hundred KB) and calls
`draw`. A run on its own draws at once. The jobs of a sweep that Hydra's basic launcher runs one after
another in one process hand the drawing to worker processes instead (spawned once per sweep, a
quarter of the cores, at least one): the next job trains meanwhile, and the sweep's process waits for
the last figures before it exits (a Ctrl-C or SIGTERM meanwhile ends the workers: the sweep's command
draws what they had not; all_drawn: exit status 1 where a full disk kept some from being drawn). A failed
drawing is logged with its run folder; the run's metrics and checkpoints are not touched by it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import zipfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.hydra_config import HydraConfig

from mnist_lab import usage
from mnist_lab.config import chosen_loggers
from mnist_lab.errors import DamagedFileError, Interrupted, Stopped, WriteError, stopping
from mnist_lab.runs import (
    RunDir,
    atomic_path,
    clear_stale_temps,
    disk_full,
    find_runs,
    free_space,
    in_sweep,
    read_config,
    shown,
)

HISTORY_TAGS = ("train/loss", "train/acc", "val/loss", "val/acc")
FIGURES = ("history", "confusion_matrix", "per_class", "mistakes")  # the PNGs draw_now writes into the run folder
log = logging.getLogger("mnist_lab")
_pool: ProcessPoolExecutor | None = None
_ended = False  # the workers were ended before they finished (end_workers): their futures say nothing
not_drawn: list[str] = []  # runs whose figures a worker could not draw for a full disk (said_if_failed)


def draw(payload: dict[str, Any], background: bool = False) -> Future | None:
    """Draw a run's figures from `payload` (see draw_now), at once or in a worker process."""
    if not background:
        draw_now(payload)
        return None
    future = pool().submit(draw_now, payload)
    future.add_done_callback(lambda f, run=payload["run_dir"]: said_if_failed(f, run))
    return future


def said_if_failed(future: Future, run: str) -> None:
    """A drawing's failure, in one line; none for one the sweep ended (end_workers): it says so itself. A run
    whose figures a full disk stopped is kept in `not_drawn`."""
    if _ended or future.cancelled() or future.exception() is None:
        return
    err = future.exception()
    if disk_full(err) is not None:
        not_drawn.append(run)
    log.error(failed_line(err, run))


def all_drawn() -> None:
    """At a sweep's end: wait for the figures its jobs handed to the workers; WriteError (one line) where a full
    disk kept some from being drawn (the sweep's command run again draws them)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=True)
        _pool = None
    if not_drawn:
        runs, not_drawn[:] = len(not_drawn), []
        raise WriteError(f"the figures of {runs} run{'s' if runs > 1 else ''} were not drawn, the disk being full "
                         f"({free_space(Path.cwd())} free): free space, then run the same command again: it draws them")


def failed_line(err: BaseException, run: str) -> str:
    """The line for a run whose figures a worker failed to draw; a full disk's says so, and that the sweep's command
    run again draws them (a resumed sweep draws the figures its finished jobs lack)."""
    full = disk_full(err)
    if full is not None:
        return (f"the figures of {shown(run)} were not drawn: {full.strerror} ({free_space(run)} free); free space, "
                "then run the same command again: it draws them")
    return f"the figures of {run} failed: {err}; draw them again with python -m mnist_lab.figures {run}"


def pool() -> ProcessPoolExecutor:
    """The drawing workers of this process (spawned at the first call, a quarter of the cores, at least one)."""
    global _pool, _ended
    if _pool is None:
        _ended = False
        workers = max(1, len(os.sched_getaffinity(0)) // 4) if hasattr(os, "sched_getaffinity") else 1
        _pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=quiet_helper, initargs=(os.getpid(),))
    return _pool


@contextlib.contextmanager
def drawn_at_the_end(again: str) -> Iterator[None]:
    """Around a sweep or study: when it ends, however it ends, wait for the figures its jobs handed to the
    workers, then end them. A SIGINT or SIGTERM meanwhile ends them at once (the figures they were drawing are not
    drawn: `again` says how to draw them) and the sweep stops in one line (Interrupted), or with the error already
    under way. Waiting here, not at the interpreter's exit, is what lets a signal stop the wait."""
    try:
        yield
    except BaseException:
        wait_for_workers(None)
        raise
    wait_for_workers(again)


def wait_for_workers(again: str | None) -> None:
    """drawn_at_the_end's wait; again=None: a signal ends the workers and says nothing (an error is on its way)."""
    global _pool
    if _pool is None:
        return
    try:
        with stopping(lambda: "while the last figures were drawn"):
            _pool.shutdown(wait=True)
    except Stopped as stop:
        end_workers()
        if again is not None:
            raise Interrupted(f"{stop.name} received {stop.where}: stopped, every result kept; {again}") from None
    finally:
        _pool = None


def end_workers() -> None:
    """End the drawing workers now (SIGKILL: they hold nothing but a figure being drawn, written atomically)."""
    global _ended
    if _pool is None:
        return
    _ended = True
    for worker in list((_pool._processes or {}).values()):  # the executor's own record of its processes
        with contextlib.suppress(OSError):
            worker.kill()
    _pool.shutdown(wait=True, cancel_futures=True)


def quiet_helper(parent: int) -> None:
    """How a drawing worker starts: in a process group of its own, so that a Ctrl-C at the terminal reaches the
    sweep alone (which says what happened) and not its helpers (whose tracebacks garbled the console); ended when
    the sweep's process ends, however it ends (Linux's parent-death signal: a SIGKILLed sweep leaves no worker
    behind); and silent: a failed drawing reaches the sweep through its future, which logs it in one line."""
    import signal
    import sys

    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker ends when the pool's pipe closes
        pass
    if os.getppid() != parent:  # the sweep ended before the signal was set up
        os._exit(0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the worker's life)


def draw_now(payload: dict[str, Any]) -> None:
    """payload: run_dir, chosen (the run's logger config), step, first (N, 28, 28) uint8 with first_labels,
    labels (N,), probs (N, 10), wrong_images (M, 28, 28) uint8 with wrong_index (M,), confusion (10, 10)."""
    import torch
    from torchmetrics.classification import MulticlassConfusionMatrix

    from mnist_lab import drawing
    from mnist_lab.loggers import log_to_run

    run, chosen = RunDir(payload["run_dir"]), payload["chosen"]
    draw_history(run.path, chosen)
    labels, probs = payload["labels"], payload["probs"]
    preds = probs.argmax(1)
    first = payload["first"]
    n = len(first)
    grid = drawing.digit_grid(first, [f"{p} ({t})" for p, t in zip(preds[:n], labels[:n], strict=True)],
                            list(preds[:n] != labels[:n]), title="test predictions: predicted (true), mistakes in red")
    confusion = payload["confusion"]
    matrix, _ = MulticlassConfusionMatrix(num_classes=len(confusion)).plot(torch.as_tensor(confusion))
    matrix.set_size_inches(6, 6)
    if not run.figure("confusion_matrix").is_file():  # saved after the images were logged: a redraw logs none
        log_to_run(run, {"logger": chosen}, {"test/predictions": grid, "test/confusion_matrix": matrix},
                   payload["step"])
    drawing.close(grid)
    drawing.save(matrix, run.figure("confusion_matrix"))
    counts = confusion.sum(1)
    accuracy = np.diag(confusion) / np.maximum(counts, 1)  # per-class recall = accuracy
    drawing.save(drawing.per_class(accuracy, counts), run.figure("per_class"))
    order = payload["wrong_index"]
    drawing.save(drawing.mistakes(payload["wrong_images"], labels[order], probs[order]), run.figure("mistakes"))


def draw_history(run_dir: str | os.PathLike, chosen: Mapping[str, Any]) -> None:
    """history.png: loss and accuracy per epoch, read back from the run's loggers (`chosen`: their config)."""
    from mnist_lab import drawing
    from mnist_lab.loggers import read_scalars

    run = RunDir(run_dir)
    drawing.save(drawing.history(read_scalars(run.path, HISTORY_TAGS, chosen)), run.figure("history"))


def missing(run_dir: str | os.PathLike) -> list[str]:
    """The figures a run folder lacks (a sweep stopped while a worker drew them)."""
    return [name for name in FIGURES if not RunDir(run_dir).figure(name).is_file()]


def in_sweep_process() -> bool:
    """Whether this is a job of a sweep whose jobs run one after another in this process (Hydra's basic
    launcher): where drawing beside the next job saves time."""
    return in_sweep() and "BasicLauncher" in str(HydraConfig.get().launcher.get("_target_", ""))


def saved_payload(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The payload a run kept in its folder (runs.RunDir.test_outputs), for drawing again on demand."""
    path = RunDir(run_dir).test_outputs
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            payload: dict[str, Any] = {k: saved[k] for k in saved.files}
        payload["step"] = int(payload["step"])
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:  # not np.savez's arrays
        problem = str(err).splitlines()[0][:60] if str(err) else type(err).__name__
        raise DamagedFileError(f"{shown(path)} is damaged ({problem}): remove it and the run's result.yaml, then run "
                               "the run (or its sweep) again: it is tested again from its checkpoint") from None
    return payload


def redraw(run_dir: str | os.PathLike, payload: dict[str, Any] | None = None, config: Mapping | None = None,
           background: bool = False) -> Future | None:
    """Draw a finished run's figures again from what it kept (saved_payload, read_config, unless given), at once
    or in a worker; what a drawing killed mid-write left is cleared first."""
    clear_stale_temps(run_dir)
    payload = payload if payload is not None else saved_payload(run_dir)
    config = config if config is not None else read_config(run_dir)
    return draw({**payload, "run_dir": str(run_dir), "chosen": dict(chosen_loggers(config))}, background)


def keep_payload(payload: Mapping[str, Any]) -> None:
    """Save the arrays of a payload in its run folder (atomically), so the figures can be drawn again."""
    arrays = {k: np.asarray(v) for k, v in payload.items() if k not in ("run_dir", "chosen")}
    with atomic_path(RunDir(payload["run_dir"]).test_outputs) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def main(argv: list[str] | None = None) -> int:
    """python -m mnist_lab.figures RUN_OR_SWEEP...: draw the figures of finished runs again."""
    parser = usage.Parser("figures")
    parser.add_argument("folders", nargs="+", type=Path, metavar="RUN_OR_SWEEP",
                        help="run folders, or folders holding runs (a sweep): each finished run's figures are drawn")
    folders = parser.parse_args(argv).folders
    runs = sorted({run for f in folders for run in find_runs(f)})
    drawn, damaged = 0, 0
    try:
        with stopping(lambda: "while the figures were drawn"):
            for run in runs:
                try:
                    payload = saved_payload(run)
                    config = read_config(run) if payload is not None else {}
                except DamagedFileError as err:  # said, and the other runs drawn
                    print(err, file=sys.stderr)
                    damaged += 1
                    continue
                if payload is None:
                    continue
                redraw(run, payload, config)
                print(f"drew the figures of {run}")
                drawn += 1
    except Stopped as stop:  # each figure is written whole or not at all
        print(f"{stop.name} received {stop.where}: stopped after those of {drawn} of {len(runs)} runs; the same "
              "command draws them again", file=sys.stderr)
        return 1
    if damaged:
        return 1
    if not drawn:
        print(f"no finished runs (with {RunDir(folders[0]).test_outputs.name}) under {', '.join(map(str, folders))}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from mnist_lab.errors import said_alone
    from mnist_lab.runs import said_when_full

    with said_alone(), said_when_full(".", "run the same command again"):  # a full disk: one line
        raise SystemExit(main())
