"""The train command's line, checked and reordered before Hydra reads it (`python -m mnist_lab.train`).

A mistake found here costs no run or sweep folder, and each is one line: a misspelled key, a value the typed
config or Hydra's grammar rejects, a value that cannot work (config.validate), a sweep that cannot work, a
Slurm that does not answer, a full disk. This module and what it imports at the top load without torch or Lightning, so
a misspelled key is one line in about a second; config.validate loads torch for the last checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab import config, runs, sweeps, usage
from mnist_lab.errors import ConfigError, NothingToDo
from mnist_lab.idx import ensure_raw_files
from mnist_lab.resume import finished

VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir",
               "-cd", "--experimental-rerun")  # Hydra's flags that take the next word as their value
INFO_VALUES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")  # --info's optional value


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line as Hydra should see it.

    - Flags (with their values: --cfg job) go before the overrides: argparse stops reading overrides at a
      flag, so `python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2` would otherwise fail.
    - resume=DIR also sets hydra.run.dir=DIR: the resumed run continues in its own folder (Hydra's
      record of this call goes to DIR/.hydra/resume/<time>/). resume=SWEEP (a sweep folder) becomes the
      sweep's saved command line, which the resumable sweeper continues (sweeps.resume_argv).
    - The checks (check): every mistake they find is one line here, before Hydra makes a folder.
    """
    flags, overrides = split_args(argv[1:])
    resume = [Path(o.split("=", 1)[1]).expanduser() for o in overrides if config.override_key(o) == "resume"]
    if resume and runs.is_sweep(resume[0]):
        argv = argv[:1] + sweeps.resume_argv(resume[0].resolve(), flags, overrides)
        flags, overrides = split_args(argv[1:])
    elif resume and (done := finished(resume[0])):
        raise NothingToDo(done)
    elif resume and not any(config.override_key(o) == "hydra.run.dir" for o in overrides):
        overrides += [f"hydra.run.dir={resume[0]}", f"hydra.output_subdir={runs.resumed_record()}"]
    if not any(f in usage.HELP_FLAGS for f in flags):  # flags that show, and train nothing
        check(overrides, multirun="-m" in flags or "--multirun" in flags)
    return argv[:1] + flags + overrides


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides) of a command line, wherever the flags stand."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        arg = args[i]
        takes = arg in VALUE_FLAGS or (arg in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in INFO_VALUES)
        if arg.startswith("-") and takes and i + 1 < len(args):
            flags += args[i:i + 2]
            i += 2
            continue
        (flags if arg.startswith("-") else overrides).append(arg)
        i += 1
    return flags, overrides


def check(overrides: list[str], multirun: bool) -> None:
    """Every check that the command line alone allows, on the config that every job shares (a sweep's swept
    values are each job's to check): keys, values, Lightning's ddp re-launch under -m, Slurm."""
    config.check_keys(overrides)
    shared = shared_overrides(overrides)
    cfg = compose(shared)
    launcher = str(cfg.hydra.launcher.get("_target_", ""))
    slurm = "Slurm" in launcher
    if slurm:
        check_slurm_devices(cfg, overrides)
        check_slurm()
    if multirun:
        config.check_ddp_relaunch(cfg, multirun=True, launcher=launcher)
    if not cfg.get("resume"):  # a resumed run's own config is checked when it is read (resume.resumed)
        config.validate(cfg, here=not slurm)  # the GPUs of a Slurm job's node are checked in the job
        # the data too (fetched where missing, once for a whole sweep); the run checks it again, from a cache
        ensure_raw_files(cfg.data.data_dir, download=cfg.data.download, checksums=cfg.data.verify_checksums)
    runs.check_space(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)  # room for Hydra's record of the call


def shared_overrides(overrides: list[str]) -> list[str]:
    """The overrides that are not sweeps; one line for an override that Hydra's grammar cannot read."""
    parser = config.OverridesParser.create()
    shared = []
    for i, override in enumerate(overrides):
        try:
            parsed = parser.parse_override(override)
        except HydraException as err:
            before = overrides[i - 1] if i else ""
            if before.endswith("="):
                raise ConfigError(f"cannot read {override!r} as an override: a space after '=' splits one in two; "
                                  f"write {before}{override}") from err
            reason = str(err).strip().splitlines()[0][:80]
            raise ConfigError(f"cannot read {override!r} as an override ({reason}): write key=value, quoting a value "
                              "that holds spaces or brackets") from err
        if not parsed.is_sweep_override():
            shared.append(override)
    return shared


def compose(overrides: list[str]) -> Any:
    """The config of `overrides` with Hydra's section, or ConfigError naming the override it cannot take."""
    try:
        return config.compose(overrides, hydra=True)
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__ if err.__cause__ is not None else err
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        which = next((o for o in overrides if o in str(err)), None)
        if which is None:
            raise ConfigError(f"the overrides cannot be composed: {reason}") from err
        raise ConfigError(f"{which} is invalid: {reason} (python -m mnist_lab.train --help lists every key)") from err


def check_slurm_devices(cfg: Any, overrides: list[str]) -> None:
    """hydra/launcher=slurm asks Slurm for GPUs by the trainer's accelerator; with `auto` the submitting
    machine (often a login node without GPUs) cannot tell, so the jobs could silently run on CPUs."""
    keys = ("trainer", "experiment", "hydra/launcher", "hydra.launcher")
    if any(config.override_key(o).startswith(keys) and ("," in o or "(" in o) for o in overrides):
        return  # a sweep over trainers: each job's own resolution will tell
    asks = str(OmegaConf.to_container(cfg.hydra.launcher, resolve=False).get("gpus_per_node"))
    if cfg.trainer.accelerator == "auto" and asks.startswith("${gpus_per_node:"):
        raise ConfigError(config.SLURM_NEEDS_ACCELERATOR)


def check_slurm() -> None:
    """Slurm answers on this machine: its client is installed and its controller replies (sbatch --version,
    scontrol ping), before a sweep folder is made for jobs that could not be submitted."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise ConfigError("hydra/launcher=slurm: Slurm's sbatch or scontrol is not on PATH; run this on a Slurm "
                          "login node (or load its module), or drop hydra/launcher=slurm to run here")
    for command in (["sbatch", "--version"], ["scontrol", "ping"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as err:
            done = subprocess.CompletedProcess(command, 1, "", str(err))
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        if done.returncode != 0 or (command[1] == "ping" and "UP" not in done.stdout):
            reason = said[-1][:90] if said else f"exit status {done.returncode}"
            raise ConfigError(f"hydra/launcher=slurm: Slurm does not answer ({' '.join(command)}: {reason}); check "
                              "its slurm.conf and that slurmctld runs, or drop hydra/launcher=slurm")
