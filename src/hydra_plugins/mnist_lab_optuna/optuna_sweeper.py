"""The Hydra plugin: Hydra finds sweepers in the hydra_plugins namespace package and imports every module
in it at start-up, so this one stays small and loads Optuna (through mnist_lab.study) only when a study runs.
Its config: conf/hydra/sweeper/optuna.yaml.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    def __init__(self, **options: Any) -> None:
        self.options = options  # the keys of conf/hydra/sweeper/optuna.yaml

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from mnist_lab.study import StudySweep

        self.study = StudySweep(**self.options)
        self.study.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from mnist_lab import figures
        from mnist_lab.errors import said_alone
        from mnist_lab.runs import said_when_full

        again = f"draw the rest with python -m mnist_lab.figures {self.study.sweep_dir}"
        # a study's error: its line alone; a full disk between its trials too (the journal keeps the finished ones)
        with said_alone(), said_when_full(str(self.study.config.hydra.sweep.dir), "run the same command again"):
            with figures.drawn_at_the_end(again):
                self.study.sweep(arguments)
            figures.all_drawn()  # exit status 1 where a full disk kept a trial's figures from being drawn
