"""Where a run starts from: a new run, resume=<run>, a Slurm job that was requeued, or a job of a resumed
sweep. For the last three it reads the run's saved config.yaml (checked against the typed schema) and
finds its checkpoints/last.ckpt; `reproduce` reads a run's config through the same saved_config.

Lightning and torch load only where there is a checkpoint to check: a run's errors come before them."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mnist_lab import config, runs
from mnist_lab.console import log
from mnist_lab.errors import CheckpointError, ConfigError
from mnist_lab.runs import RunDir, in_sweep, result_metrics, shown


def continued(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """The config and checkpoint a run starts from: for resume=<run> or a Slurm job that was requeued,
    the run's saved config and its checkpoints/last.ckpt (checked); otherwise cfg and None."""
    if cfg.get("resume"):
        return resumed(cfg)
    run = RunDir(cfg.output_dir)
    ckpt = run.restart_checkpoint()
    if (requeued() or in_sweep()) and ckpt is not None:  # the same job again: its config is cfg
        from mnist_lab.module import load_checkpoint  # torch: only where there is a checkpoint to check

        if in_sweep():  # a resumed sweep: the same overrides (sweeps.py checked), but conf/ may have changed
            check_unchanged(cfg, run)
        try:
            load_checkpoint(ckpt, model_name=cfg.model.name)
        except CheckpointError:  # damaged (a kill mid-write on a filesystem without atomic rename)
            if not in_sweep():
                raise
            runs.set_aside(ckpt, "no checkpoint this job can resume from")
            return cfg, None
        log.info(f"{'requeued job' if requeued() else 'resumed sweep'}: resuming from {ckpt}")
        return cfg, str(ckpt)
    return cfg, None



def resumed(cfg: DictConfig) -> tuple[DictConfig, str]:
    """resume=<run>: the run's saved config, with this call's RESUME_MAY_SET values, and its last.ckpt (or a newer
    best.ckpt: RunDir.restart_checkpoint)."""
    run = RunDir(Path(cfg.resume).expanduser().resolve())
    if not run.config.is_file():
        raise ConfigError(f"resume={cfg.resume}: {shown(run.config)} not found; give the folder of a run started by "
                          "python -m mnist_lab.train (it holds config.yaml and checkpoints/)")
    ckpt_path = run.restart_checkpoint()
    if ckpt_path is None:
        raise CheckpointError(f"resume={cfg.resume}: {shown(run.last_ckpt)} not found; the run saved no checkpoint "
                              "yet, so start it again instead")
    saved = saved_config(run, f"resume={cfg.resume}")
    for key in config.RESUME_MAY_SET:  # this call's values
        if key != "data.data_dir" or data_dir_given():  # else the run's own, where its data was
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
    saved.output_dir, saved.resume = str(run.path), str(run.path)
    try:
        config.validate(saved)  # e.g. its logger may need a package this machine lacks
    except ConfigError as err:
        raise ConfigError(f"resume={cfg.resume}: in its config.yaml, {err}") from None
    from mnist_lab.module import load_checkpoint  # torch: once the checks that need none have passed

    ckpt = load_checkpoint(ckpt_path, model_name=saved.model.name)
    log.info(f"resuming {shown(run.path)} from {ckpt_path.relative_to(run.path)}, saved after step "
             f"{ckpt.get('global_step', 0)} (epoch {ckpt.get('epoch', 0) + 1})")
    return saved, str(ckpt_path)


def finished(run_dir: str | os.PathLike) -> str | None:
    """For resume= of a run that finished (its result.yaml holds its metrics): the line that says so; else None.
    Such a run is left as it is: nothing to resume, nothing rewritten."""
    run = RunDir(Path(run_dir).expanduser())
    if not runs.finished(run.path):
        return None  # no whole record (runs.result_problem): the run resumes, tested again from its checkpoint
    metrics = result_metrics(run.path)
    tests = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/"))
    if not tests:
        return None
    return (f"{shown(run.path)} finished already ({tests}): nothing to resume, nothing changed; start a new run "
            "to train again")


def data_dir_given() -> bool:
    """Whether this call says where the data is (data.data_dir= or MNIST_LAB_DATA_DIR); train(cfg) from Python
    always does. Otherwise resume= keeps the run's own data folder, so that the command its interrupt message
    prints works as it is."""
    if not HydraConfig.initialized() or "MNIST_LAB_DATA_DIR" in os.environ:
        return True
    return any(config.override_key(o) == "data.data_dir" for o in HydraConfig.get().overrides.task)


def saved_config(run: RunDir, asked: str) -> DictConfig:
    """A run's config.yaml, read and checked against the typed schema; ConfigError (one line, beginning with
    `asked`: what read it, e.g. "resume=<run>") where it was damaged or hand-edited to what the schema cannot
    take."""
    started = run.started_config
    fix = (f"fix it, or restore it from {started.relative_to(run.path)} there (the config the run started with)"
           if started.is_file() else "fix it, or start the run again")
    try:
        loaded = OmegaConf.load(run.config)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{asked}: its config.yaml holds no config keys; {fix}")
        loaded.logger = config.chosen_loggers(loaded)  # a config saved before the logger group: TensorBoard
        return OmegaConf.merge(OmegaConf.structured(config.Config), loaded)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{asked}: its config.yaml is not valid YAML{where}; {fix}") from err
    except OmegaConfBaseException as err:
        key = err.full_key or err.key or "a key"
        raise ConfigError(f"{asked}: its config.yaml holds an invalid {key}: {err.value!r}; {fix}") from err


def check_unchanged(cfg: DictConfig, run: RunDir) -> None:
    """Raise ConfigError where the config a sweep job resumes with differs from the one its run folder saved
    (keys that resume= may set aside, and the run folder's own path)."""
    free = (*config.RESUME_MAY_SET, "output_dir")
    if run.config.is_file():
        runs.read_config(run.path)  # checked: a damaged one is named in one line
    saved = config.flatten(OmegaConf.to_container(OmegaConf.load(run.config)) if run.config.is_file() else {})
    now = config.flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [f"{k}={now.get(k)} (saved: {saved.get(k)})" for k in sorted(saved.keys() | now.keys())
               if saved.get(k) != now.get(k) and not config.among(k, free)]
    if changed:
        raise ConfigError(f"{run.path}: an interrupted run of another config ({'; '.join(changed)}); conf/ changed "
                          "since the sweep began: restore it, or give a new hydra.sweep.dir")


def requeued() -> bool:
    """Whether Slurm started this process for a job that was requeued (preempted or at its time limit)."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
        return False  # asked first: a run's checks come before Lightning is loaded
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()
