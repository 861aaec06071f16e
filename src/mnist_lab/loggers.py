"""The run's loggers: built from config in one place, written to and read back through this module.

    build_loggers(cfg, run)    the Lightning loggers of a run
    log_figure(...)            a matplotlib figure to every logger that takes images
    read_scalars(run_dir)      a run's logged scalars per tag, whichever logger wrote them
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mnist_lab.runs import RunDir


def build_loggers(cfg: Any, run: RunDir) -> list:
    """TensorBoard's event files in the run folder."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return [TensorBoardLogger(run.path, name="", version="", default_hp_metric=False)]


def log_figure(loggers: list, tag: str, figure, step: int) -> None:
    """Draw `figure` into every logger that keeps images (TensorBoard's Images tab); others skip it."""
    for logger in loggers:
        writer = getattr(logger, "experiment", None)
        if hasattr(writer, "add_figure"):
            writer.add_figure(tag, figure, step, close=False)


def read_scalars(run_dir: str | Path, tags: tuple[str, ...] | None = None) -> dict[str, list[float]]:
    """A run's logged values per tag, in step order, one per step (a resumed run may log a step twice:
    the later value counts). Read with TensorBoard's own EventAccumulator."""
    import logging

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after ..." is expected
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    found = events.Tags()["scalars"]
    series = {}
    for tag in found if tags is None else [t for t in tags if t in found]:
        by_step = {e.step: e.value for e in events.Scalars(tag)}
        series[tag] = [by_step[s] for s in sorted(by_step)]
    return series


def log_to_run(run: RunDir, config: dict, tag: str, figure, step: int) -> None:
    """Add `figure` to a finished run's loggers (a new TensorBoard event file in its folder)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(run.path, name="", version="", default_hp_metric=False)
    log_figure([logger], tag, figure, step)
    logger.finalize("success")
