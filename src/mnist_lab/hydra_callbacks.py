"""Hydra callbacks (registered in conf/config.yaml under hydra.callbacks)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode

log = logging.getLogger("mnist_lab")


class ReportFailures(Callback):
    """In a multirun, log each failed job with its overrides as it ends.

    Hydra's basic launcher runs every job, then raises the first failure only.
    """

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED and config.hydra.mode == RunMode.MULTIRUN:
            line = f"job {config.hydra.job.get('num', 0)} ({' '.join(job_return.overrides or [])}) failed: " \
                   f"{job_return._return_value}"
            log.error(line)
