"""Hydra callbacks (registered in conf/config.yaml under hydra.callbacks)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from mnist_lab.config import override_key
from mnist_lab.errors import Interrupted
from mnist_lab.runs import SWEEP_LOG, shown

log = logging.getLogger("mnist_lab")


class ReportFailures(Callback):
    """In a multirun: log each failed job with the overrides the sweep varies as it ends (Hydra's basic
    launcher runs every job, then raises the first failure only), and keep the sweep folder's sweep.log, a
    line for every job: its test accuracy and folder, or its failure's one line (the job's own train.log has
    the cause), or that a signal interrupted it (its line; the sweep says it too), or that an Optuna study
    pruned it. Hydra turns an exception raised here into a warning: nothing here can stop a sweep."""

    swept: set[str] | None = None  # the keys the sweep varies: a job is named by their values

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        self.swept = {override_key(o.get_key_element()) for o in overrides if o.is_sweep_override()}

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        overrides = [o for o in job_return.overrides or [] if not self.swept or override_key(o) in self.swept]
        job = f"job {config.hydra.job.get('num', 0)} ({' '.join(overrides)})"
        trial = config.hydra.sweeper.get("trial") is not None  # of an Optuna study, which logs how each ended
        optuna = sys.modules.get("optuna")  # loaded wherever a trial was pruned
        value = job_return._return_value
        if job_return.status == JobStatus.FAILED and optuna is not None and isinstance(value, optuna.TrialPruned):
            line = f"{job} pruned: {value}"  # the study's pruner stopped it: not a failure
        elif job_return.status == JobStatus.FAILED and isinstance(value, Interrupted):
            line = f"{job} interrupted: {value}"  # a signal: the sweep's command continues it
        elif job_return.status == JobStatus.FAILED:
            line = f"{job} failed: {value}"
            if not trial:
                log.error(line)
        else:
            result = f"test/acc {value:.4f}" if isinstance(value, float) else "done"
            line = f"{job} finished: {result}, in {shown(config.hydra.runtime.output_dir)}"
        sweep_log = Path(config.hydra.sweep.dir) / SWEEP_LOG
        try:
            with sweep_log.open("a", encoding="utf-8") as f:  # appended: jobs on a cluster end side by side
                f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")
        except OSError as err:
            log.warning(f"could not add to {shown(sweep_log)}: {err.strerror}")
