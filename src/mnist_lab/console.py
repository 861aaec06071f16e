"""What a run prints and what it keeps of it.

    console     mnist_lab's lines (the summary, the device, one line per epoch, the test metrics), warnings
                and errors; a live progress bar only where the output is a terminal: in a file or a Slurm
                log its redraws would pile up, and the epoch lines say the same once an epoch
                (reporting.EpochLines, reporting.RunProgressBar)
    train.log   in the run folder, with times: the same lines, Lightning's own INFO lines, and every error
                with the library's cause (the console shows the error's one line)

Third-party tips go nowhere. Under `python -m mnist_lab.train` the console handler is set up by Hydra from
conf/hydra/job_logging/mnist_lab.yaml; train(cfg) called from Python prints to stdout itself unless the
program's logging already shows log lines on the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from mnist_lab.errors import MnistLabError
from mnist_lab.runs import RunDir

log = logging.getLogger("mnist_lab")
log.setLevel(logging.INFO)

FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's format for a job's log
TIP = re.compile(r"^\W*Tip:")  # Lightning's advertisements ("💡 Tip: ... try installing litlogger")


class NoTips(logging.Filter):
    """Drops third-party tips, from the console and the log alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("lightning") and TIP.match(record.getMessage()))


class ConsoleFilter(NoTips):
    """What the console shows: mnist_lab's and Hydra's lines, and anyone's warnings and errors; not the lines
    logged for the log file only (an error whose one line the caller prints) nor Lightning's INFO lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False or not super().filter(record):
            return False
        return record.levelno >= logging.WARNING or record.name.startswith(("mnist_lab", "hydra", "__main__"))


class Console(logging.StreamHandler):
    """Plain lines on stdout that a live progress bar does not tear: tqdm clears its bars around each line."""

    def __init__(self, stream=None):
        super().__init__(sys.stdout if stream is None else stream)
        self.addFilter(ConsoleFilter())
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with tqdm.external_write_mode(file=self.stream):
            super().emit(record)


class RunLog(logging.FileHandler):
    """Appends to <run>/train.log, once the run folder exists (a run rejected before it was made leaves none).

    A log is appended, not renamed into place: a failed append keeps what was written before. Lines that a full
    disk refused are kept (the last PENDING) and written before the next one, once there is room again (a
    checkpoint's temporary file removed frees some), so the log ends with the run's error line where it can."""

    PENDING = 200

    def __init__(self, path: Path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setLevel(logging.INFO)
        self.addFilter(NoTips())
        self.setFormatter(logging.Formatter(FILE_FORMAT))
        self.pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None and not Path(self.baseFilename).parent.is_dir():
            return
        try:
            self.pending = [*self.pending, self.format(record) + self.terminator][-self.PENDING:]
            self._write()
        except Exception:
            self.handleError(record)

    def _write(self) -> None:
        try:
            if self.stream is None:
                self.stream = self._open()
                if self.stream.tell() and not self._ends_whole():  # a line cut short by the last failure
                    self.pending.insert(0, self.terminator)
            while self.pending:
                self.stream.write(self.pending[0])
                self.stream.flush()
                self.pending.pop(0)
        except OSError:  # a full disk, a quota: tried again with the next line and at close
            stream, self.stream = self.stream, None
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def handleError(self, record: logging.LogRecord) -> None:
        pass  # quiet: the console still shows the run's end

    def _ends_whole(self) -> bool:
        with open(self.baseFilename, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            super().flush()

    def close(self) -> None:
        self.acquire()
        try:
            if self.pending and Path(self.baseFilename).parent.is_dir():
                self._write()
            with contextlib.suppress(OSError):
                super().close()
            self.stream = None
        finally:
            self.release()


@contextlib.contextmanager
def recorded(run_dir: str | Path, rank_zero: bool = True, this_thread: bool = False) -> Iterator[None]:
    """While the block runs, log to the run folder's train.log (rank 0 only) and, where nothing else shows
    mnist_lab's lines, to stdout. An error that ends the block is logged with its cause from the library.
    this_thread: train.log keeps this thread's lines only (runs that share a process: mnist_lab.stack)."""
    root = logging.getLogger()
    handlers: list[tuple[logging.Logger, logging.Handler]] = []
    if rank_zero:
        handlers.append((root, RunLog(RunDir(run_dir).log)))
        if this_thread:
            thread = threading.get_ident()
            handlers[-1][1].addFilter(lambda record: record.thread == thread)
    if not shows_console(root) and not log.handlers:  # called from Python without a console for log lines
        handlers.append((log, Console()))
    for logger, handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    except BaseException as err:
        line = str(err) if isinstance(err, MnistLabError) else f"{type(err).__name__}: {err}"
        cause = err.__cause__ or err.__context__
        if isinstance(err, MnistLabError):
            log.error(line, extra={"console": False})  # the caller prints it (Hydra: the line alone)
            if cause is not None:
                log.info("its cause:", extra={"console": False}, exc_info=(type(cause), cause, cause.__traceback__))
        else:
            log.error(line, extra={"console": False}, exc_info=(type(err), err, err.__traceback__))
        raise
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
            handler.close()


def shows_console(logger: logging.Logger) -> bool:
    """Whether `logger` has a handler that writes to the console (Hydra's, or a program's basicConfig); a
    handler that only captures (pytest's) does not count."""
    consoles = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return any(isinstance(h, logging.StreamHandler) and h.stream in consoles for h in logger.handlers)


def rank_zero() -> bool:
    """Whether this process is a job's first (the one that keeps the log), from the variables its launcher set:
    Lightning's ddp, torchrun or Slurm (Lightning reads the same)."""
    return all(int(os.environ.get(k) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"))


def show_progress_bar(setting: bool | None) -> bool:
    """trainer.enable_progress_bar: null (the default) shows the live bar only where stdout is a terminal."""
    if setting is not None:
        return bool(setting)
    return sys.stdout.isatty()


def quiet_lightning() -> None:
    """Lightning's INFO lines through the run's handlers (under Hydra: into train.log, not on the console;
    mnist_lab.console), and no warnings that concern Lightning's internals or choices made here on purpose."""
    if logging.getLogger().handlers:  # Hydra configured the root logger
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        source = logging.getLogger(name)  # where Lightning's rank_zero_info lines come from, tips included
        if not any(isinstance(f, NoTips) for f in source.filters):
            source.addFilter(NoTips())  # for every handler, Lightning's own too (a script without Hydra)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")  # val_size=0
    warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy")  # torchmetrics plot
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")  # a local run on a Slurm host
    # A run folder holds its checkpoints: a resumed run writes into it on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # reporting.EpochLines is a Checkpoint to Lightning; "best" is the first one's, as intended.
    warnings.filterwarnings("ignore", message=r".*\"best\"\)` is called with Trainer configured with multiple")
    # The fast path logs once an epoch, and an epoch is a few training_steps of K steps each.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")
