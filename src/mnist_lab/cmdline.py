"""The train command's line, checked and reordered before Hydra reads it (`python -m mnist_lab.train`).

A mistake found here costs no sweep folder and no torch import: this module and what it imports (config,
sweeps, runs) load without torch or Lightning, so a misspelled key is one line in about a second."""

from __future__ import annotations

from pathlib import Path

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab import config, runs, sweeps
from mnist_lab.errors import ConfigError

INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c")  # flags that show, and train nothing


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line as Hydra should see it.

    - -m/--multirun goes before the overrides: argparse stops reading overrides at a flag, so
      `python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2` would otherwise fail.
    - resume=DIR also sets hydra.run.dir=DIR: the resumed run continues in its own folder (Hydra's
      record of this call goes to DIR/.hydra/resume/). resume=SWEEP (a sweep folder) becomes the sweep's
      saved command line, which the resumable sweeper continues (sweeps.resume_argv).
    - A misspelled key fails here with a suggestion ("did you mean ...?"): config.check_keys.
    - hydra/launcher=slurm with trainer=auto fails here too (check_slurm_devices).
    - A sweep that cannot work fails here, before Hydra makes its folder: check_sweep.
    """
    args = argv[1:]
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if not any(f in INFO_FLAGS for f in flags):
        config.check_keys(overrides)
        if "hydra/launcher=slurm" in overrides:
            check_slurm_devices(overrides)
        if "-m" in flags or "--multirun" in flags:
            check_sweep(overrides)
    resume = [Path(o.split("=", 1)[1]).expanduser() for o in overrides if config.override_key(o) == "resume"]
    if resume and runs.is_sweep(resume[0]):
        return argv[:1] + sweeps.resume_argv(resume[0].resolve(), flags, overrides)
    if resume and not any(config.override_key(o) == "hydra.run.dir" for o in overrides):
        overrides += [f"hydra.run.dir={resume[0]}", f"hydra.output_subdir={runs.HYDRA_RESUMED}"]
    return argv[:1] + flags + overrides


def check_slurm_devices(overrides: list[str]) -> None:
    """hydra/launcher=slurm asks Slurm for GPUs by the trainer's accelerator; with `auto` the submitting
    machine (often a login node without GPUs) cannot tell, so the jobs could silently run on CPUs."""
    keys = ("trainer", "experiment", "hydra/launcher", "hydra.launcher")
    relevant = [o for o in overrides if config.override_key(o).startswith(keys)]
    if any("," in o or "(" in o for o in relevant):
        return  # a sweep over trainers: each job's own resolution will tell
    cfg = config.compose(relevant, hydra=True)
    asks = str(OmegaConf.to_container(cfg.hydra.launcher, resolve=False).get("gpus_per_node"))
    if cfg.trainer.accelerator == "auto" and asks.startswith("${gpus_per_node:"):
        raise ConfigError(config.SLURM_NEEDS_ACCELERATOR)


def check_sweep(overrides: list[str]) -> None:
    """Lightning's `ddp` re-launch under --multirun (config.check_ddp_relaunch), refused before the sweep begins,
    on the config with the overrides that every job shares (a sweep over trainers: each job checks its own)."""
    try:
        parsed = config.OverridesParser.create().parse_overrides(overrides)
        shared = [o for o, p in zip(overrides, parsed, strict=True) if not p.is_sweep_override()]
        cfg = config.compose(shared, hydra=True)
    except (HydraException, OmegaConfBaseException):
        return  # Hydra says what is wrong with the overrides
    config.check_ddp_relaunch(cfg, multirun=True, launcher=str(cfg.hydra.launcher.get("_target_", "")))
