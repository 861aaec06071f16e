"""Which code, data, machine and command made a run: <run>/provenance.yaml (runs.PROVENANCE).

    git          the commit of the code that ran, whether the checkout was dirty (the uncommitted changes
                 are saved beside it as provenance.diff, untracked files named), or why there is no commit
    command      the process's command line and the job's overrides (a Slurm job's command is submitit's)
    versions     python, torch, lightning, hydra, torchmetrics, numpy, mnist_lab
    data         the SHA-256 of the four MNIST files the run read
    host         name, OS, CPU, GPUs, the torch threads the run used; Slurm's job and array ids when present
    resumed      one entry per later start of the same run (resume=, a requeued job, a resumed sweep)

A summary (git commit and state, versions, host) also goes into every checkpoint's hyper_parameters and
from there into export's model.yaml. The run's rank 0 writes the file; nothing here fails a run: what
cannot be found is said in the file instead.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from hydra.core.hydra_config import HydraConfig

from mnist_lab.idx import RAW_FILES, file_sha256, raw_folder
from mnist_lab.runs import RunDir, set_aside, write_text, yaml_problem

PACKAGES = ("torch", "lightning", "hydra-core", "torchmetrics", "numpy", "mnist_lab")
SLURM_VARS = {"job_id": "SLURM_JOB_ID", "array_job_id": "SLURM_ARRAY_JOB_ID", "array_task_id": "SLURM_ARRAY_TASK_ID",
              "restart_count": "SLURM_RESTART_COUNT", "nodes": "SLURM_JOB_NODELIST", "partition": "SLURM_JOB_PARTITION"}
UNTRACKED_MAX_BYTES = 256 * 1024  # an untracked file larger than this is named, not copied into the diff
SOURCE = Path(__file__).resolve().parent  # the code whose commit is recorded: this package's folder


def collect(data_dir: str | os.PathLike | None = None) -> tuple[dict[str, Any], str]:
    """(provenance, diff): the record of this process, and the checkout's uncommitted changes ('' if none)."""
    git, diff = git_state()
    record = {
        "created": now(),
        "git": git,
        "command": command(),
        "versions": versions(),
        "host": host(),
    }
    if data_dir is not None:
        record["data"] = data_files(data_dir)
    if slurm := {k: os.environ[v] for k, v in SLURM_VARS.items() if v in os.environ}:
        record["slurm"] = slurm
    return record, diff


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a record that goes into checkpoints (plain values, a few lines)."""
    git = record["git"]
    return {"created": record["created"], "git_commit": git.get("commit"), "git_dirty": git.get("dirty"),
            **({"git": git["error"]} if "error" in git else {}),
            "host": record["host"]["name"], "versions": record["versions"]}


def git_state(source: Path | None = None) -> tuple[dict[str, Any], str]:
    """The state of the checkout that holds `source` (default SOURCE, this package), if git tracks it there."""
    source = source or SOURCE

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout

    try:
        root = git("rev-parse", "--show-toplevel").strip()
        tracked = bool(git("ls-files", "--", ".").strip())  # an installed copy inside another checkout is not it
    except FileNotFoundError:
        return {"error": "git is not installed: the code's commit is unknown"}, ""
    except subprocess.TimeoutExpired:
        return {"error": f"git did not answer within 30 s in {source}: the code's commit is unknown"}, ""
    except subprocess.CalledProcessError as err:
        why = (err.stderr or "").strip().splitlines()
        return {"error": f"not a git checkout: the code ran from {source} (an installed copy?), so there is no "
                         f"commit to name" + (f" (git: {why[0]})" if why else "")}, ""
    if not tracked:
        return {"error": f"the code ran from {source}, which {root} does not track (an installed copy?), so "
                         "there is no commit to name"}, ""
    state: dict[str, Any] = {"commit": git("rev-parse", "HEAD").strip(), "root": root}
    branch = git("rev-parse", "--abbrev-ref", "HEAD").strip()
    if branch != "HEAD":
        state["branch"] = branch
    status = git("status", "--porcelain", "--untracked-files=all").splitlines()
    state["dirty"] = bool(status)
    if not status:
        return state, ""
    diff = git("diff", "HEAD", "--binary")
    untracked = [line[3:] for line in status if line.startswith("?? ")]
    for name in untracked:
        path = Path(root) / name
        if path.is_file() and path.stat().st_size <= UNTRACKED_MAX_BYTES:
            # `git diff --no-index` exits 1 when the files differ, which they do
            diff += subprocess.run(["git", "-C", root, "diff", "--no-index", "--binary", "--", "/dev/null", name],
                                   capture_output=True, text=True, timeout=30).stdout
    state["changed"] = [line[3:] for line in status if not line.startswith("?? ")]
    if untracked:
        state["untracked"] = untracked
    return state, diff


def command() -> dict[str, Any]:
    """The command line, as a user would type it, and the job's overrides where Hydra launched it."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("mnist_lab", "train.py")):
        argv = ["python", "-m", "mnist_lab.train", *argv[1:]]
    found: dict[str, Any] = {"line": shlex.join(argv), "cwd": os.getcwd(), "python": sys.executable}

    if HydraConfig.initialized():
        found["overrides"] = list(HydraConfig.get().overrides.task)
    return found


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name.removesuffix("-core")] = version(name)
        except PackageNotFoundError:
            found[name.removesuffix("-core")] = "not installed"
    return found


def host() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"name": socket.gethostname(), "os": platform.platform(), "cpu": cpu_name(), "cpus": cpus,
            "torch_threads": torch.get_num_threads(), "gpus": gpus}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def data_files(data_dir: str | os.PathLike) -> dict[str, Any]:
    folder = raw_folder(data_dir)
    sha = {name: file_sha256(folder / name) if (folder / name).is_file() else "missing" for name in RAW_FILES}
    return {"folder": str(folder), "sha256": sha}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write(run: RunDir, record: dict[str, Any], diff: str) -> None:
    """provenance.yaml (and provenance.diff) of a new run; for a run that already has one (a resumed run),
    the record is added to its `resumed` list, the earlier ones kept."""
    problem = yaml_problem(run.provenance) if run.provenance.is_file() else None
    if problem is not None:  # the earlier starts' record is lost: this start's is written in its place
        set_aside(run.provenance, problem, then="this start's record is written in its place")
    if run.provenance.is_file():
        first = yaml.safe_load(run.provenance.read_text())
        n = len(first.get("resumed", [])) + 1
        if diff:
            name = f"{run.provenance_diff.stem}.resumed-{n}.diff"
            write_text(run.path / name, diff)
            record["git"]["diff"] = name
        first.setdefault("resumed", []).append(record)
        write_text(run.provenance, yaml.safe_dump(first, sort_keys=False))
        return
    if diff:
        write_text(run.provenance_diff, diff)
        record["git"]["diff"] = run.provenance_diff.name
    write_text(run.provenance, yaml.safe_dump(record, sort_keys=False))


class Provenance(L.Callback):
    """Writes the run's provenance file when fit starts, from global rank 0 only (known only once the
    trainer has set up its processes: every rank of every node runs train())."""

    def __init__(self, run: RunDir, record: dict[str, Any], diff: str):
        self.run, self.record, self.diff = run, record, diff

    def setup(self, trainer, module, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero:
            self.record["host"]["device"] = trainer.strategy.root_device.type  # cpu, cuda, mps
            self.record["host"]["world_size"] = trainer.world_size
            write(self.run, self.record, self.diff)
