"""The errors a user can meet. Each message is one line: what is wrong, then what to do.

They derive from Hydra's CompactHydraException, so `python -m mnist_lab.train` prints the message
alone, without a traceback (HYDRA_FULL_ERROR=1 shows it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

from hydra.errors import CompactHydraException


class MnistLabError(CompactHydraException):
    """A problem with the user's input or run, with the fix in the message."""


class DataError(MnistLabError):
    """Missing or damaged MNIST files."""


class NothingToDo(MnistLabError):
    """The command asks for what is already done (resume= of a finished run): said in a line, exit status 0."""


class JobsFailed(MnistLabError):
    """Some jobs of a sweep failed (each said why in its own line and in sweep.log); the others finished."""


class ConfigError(MnistLabError):
    """A config value that cannot work; raised before any data is read or output written."""


class CheckpointError(MnistLabError):
    """A checkpoint that is missing, damaged, not mnist_lab's, or of another model."""


class TrainingError(MnistLabError):
    """Training cannot go on (a non-finite loss)."""


class Interrupted(MnistLabError):
    """Ctrl-C or SIGTERM: a checkpoint was saved and the run can be resumed."""


class WriteError(MnistLabError):
    """A file could not be written (a full disk, a quota, no permission); the earlier file is kept whole."""


class DamagedFileError(MnistLabError):
    """A file of a run or sweep that is not what it should hold (empty, cut short, garbled): the message names
    it and what to do."""


class LockedError(MnistLabError):
    """A run folder, sweep folder or study that another live process holds (runs.Lock)."""


class ExportCheckError(MnistLabError):
    """An exported file whose outputs differ from the eager model's."""


class ModelError(MnistLabError):
    """No usable exported model where one was asked for."""


class StudyError(MnistLabError):
    """An Optuna study that cannot start or go on: a storage that is not a study, one over another search
    space, too many failed trials, a sweep that was stopped."""


class ObjectiveError(ConfigError):
    """The study's metric is one the run does not log: every trial would fail the same way."""


class Stopped(BaseException):
    """SIGINT or SIGTERM outside the training loop (stopping): raised where the signal finds the process, past
    libraries' `except Exception`, up to the layer that knows what was kept and says it (a run, a sweep, the
    command). `where` says what the process was doing: "during the test", "while starting"."""

    def __init__(self, signum: int, where: str = ""):
        super().__init__(signum, where)
        self.signum, self.where = signum, where
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def signals_to(handler: Callable[[int, object], None]) -> Iterator[dict[int, object]]:
    """SIGINT and SIGTERM go to `handler` while the block runs; the handlers before are restored after it. A signal
    the process was started with ignored (a background job's SIGINT), or whose handler was set outside Python, is
    left as it is. Yields the handlers replaced ({signal: handler}; emptying it early hands them back for good).
    Only the main thread can catch signals: elsewhere this does nothing."""
    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        previous.update({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)
                         if signal.getsignal(sig) not in (signal.SIG_IGN, None)})
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield previous
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


@contextlib.contextmanager
def stopping(where: Callable[[], str] | None = None) -> Iterator[Callable[[], None]]:
    """SIGINT and SIGTERM raise Stopped while the block runs (the training loop has its own handler,
    guards.GracefulInterrupt); `where()` names the phase. Nested blocks hand back to the outer one; the handlers
    before the outermost are restored after it (signals_to). A signal that finds the process exiting (SystemExit on
    its way) lets the exit go on. It yields `release`, which hands the signals back before the block ends (a DDP
    run, whose ranks must agree where to stop: Lightning's handling)."""

    def stop(signum: int, frame: object) -> None:
        if isinstance(sys.exc_info()[1], SystemExit):  # already exiting: e.g. submitit's exit after it requeued a
            return  # preempted Slurm job, which Slurm's SIGTERM follows; a Stopped would replace it with a result
        raise Stopped(signum, where() if where is not None else "")

    with signals_to(stop) as previous:
        def release() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            previous.clear()

        yield release


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then reach the handler they would have found: for writes that
    go together (a trial told complete and its trial.yaml)."""
    got: list[int] = []
    try:
        with signals_to(lambda signum, frame: got.append(signum)):
            yield
    finally:
        if got:
            signal.raise_signal(got[0])


@contextlib.contextmanager
def said_alone() -> Iterator[None]:
    """Around a Hydra sweeper's sweep: an MnistLabError ends the process with its line alone and exit status 1,
    without the lines Hydra prints around it ("Set the environment variable HYDRA_FULL_ERROR=1 ..."), which
    HYDRA_FULL_ERROR=1 keeps, with the traceback."""
    try:
        yield
    except MnistLabError as err:
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        sys.stderr.write(f"{err}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
