"""Train on MNIST, then test the best checkpoint.

    python -m mnist_lab.train                                       # MLP, 5 epochs
    python -m mnist_lab.train model=convnet optimizer.lr=3e-4
    python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2    # the Keras tutorial, 3 seeds
    python -m mnist_lab.train export=true                           # also export the best checkpoint
    python -m mnist_lab.train resume=outputs/runs/<time>            # continue an interrupted run

It prints the model summary, one line per epoch and the test metrics (a live progress bar too where the
output is a terminal); train.log in the run folder keeps the same, with times, and any error with its cause.
A run folder (outputs/runs/<time>/, or outputs/sweeps/<time>/<n>_<model>_<overrides>/ under -m)
holds config.yaml (resolved), train.log, summary.txt, checkpoints/{best,last}.ckpt, what its loggers wrote
(logger=tensorboard, the default: event files, `tensorboard --logdir outputs`; logger=csv: metrics.csv;
logger=mlflow: an MLflow store) and the run's figures (history, per-class accuracy, mistakes, confusion
matrix). mnist_lab.runs lists the layout. Offline, point data.data_dir= (or
MNIST_LAB_DATA_DIR) at a folder holding MNIST/raw/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lab import config as _config  # registers the typed configs
from mnist_lab import runlog, runs
from mnist_lab.config import CONF_DIR
from mnist_lab.runlog import log
from mnist_lab.runs import RunDir, owning_run, shown, write_text


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test on the best checkpoint, and return the test metrics ({"test/acc": ..., "test/loss": ...}).

    What it prints also goes to the run folder's train.log (runlog.recorded), an error with its cause."""
    resume = Path(cfg.resume).expanduser() if cfg.get("resume") else None
    # a resumed run's record continues in its own log, where it has one
    run_dir = resume if resume is not None and RunDir(resume).config.is_file() else Path(cfg.output_dir)
    first = runlog.rank_zero() and int(os.environ.get("NODE_RANK") or 0) == 0  # one process holds the run folder
    with runlog.recorded(run_dir, rank_zero=runlog.rank_zero()), owning_run(run_dir, take=first):
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    from mnist_lab.idx import ensure_raw_files

    quiet_lightning()
    if not cfg.get("resume"):  # a resumed run's saved config is validated instead (continued)
        _config.validate(cfg)  # before any data is read or output written
    cfg, ckpt_path = continued(cfg)
    # the data files too, before the run folder is made: a missing or damaged file leaves no folder behind
    ensure_raw_files(cfg.data.data_dir, download=cfg.data.download, checksums=cfg.data.verify_checksums)

    import lightning as L
    import torch

    from mnist_lab import provenance
    from mnist_lab.callbacks import FitRecord
    from mnist_lab.models import build_model, summary

    run = RunDir(cfg.output_dir)
    run.path.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)  # plain values: checkpoints stay weights_only-loadable
    if ckpt_path is None:
        write_text(run.config, OmegaConf.to_yaml(plain))

    torch.set_num_threads(cfg.threads or _config.default_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    record, diff = provenance.collect(cfg.data.data_dir)

    net = build_model(**plain["model"])
    table = summary(net)
    log.info(table)
    write_text(run.summary, table + "\n")

    trainer, module, datamodule = build_run(cfg, run, net, provenance=provenance.summary(record))
    trainer.callbacks.append(provenance.Provenance(run, record, diff))  # written by global rank 0
    log.info(describe_device(trainer, cfg, module.fast))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fitted = next(c for c in trainer.callbacks if isinstance(c, FitRecord)).fitted()  # a restart's too
    test_ckpt = None if cfg.trainer.fast_dev_run else "best"
    results = trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True)[0]
    metrics = {k: float(v) for k, v in results.items() if k.startswith("test/")}
    log.info("test: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  ({shown(run.path)})")
    if cfg.export and trainer.is_global_zero:
        from mnist_lab.export import export  # ONNX and friends load only when asked

        checkpoint = trainer.checkpoint_callback
        export(checkpoint.best_model_path or checkpoint.last_model_path, data_dir=cfg.data.data_dir)
    if trainer.is_global_zero:
        write_result(run, {**fitted, **metrics})
    return metrics


def write_result(run: RunDir, metrics: dict[str, float]) -> None:
    """<run>/result.yaml, the mark of a finished run (a resumed sweep skips it; reproduce compares with it):
    the last epoch's training and validation means and the best checkpoint's test metrics."""
    import yaml

    from mnist_lab.provenance import now

    result = {"finished": now(), "metrics": dict(sorted(metrics.items()))}
    write_text(run.result, yaml.safe_dump(result, sort_keys=False))


def build_run(cfg: DictConfig, run: RunDir, net=None, provenance: dict | None = None):
    """(trainer, module, datamodule) of a run, as train() fits them; scripts/bench.py times epochs through
    the same. `net` defaults to a fresh one from cfg.model. On the fast path (fastpath.plan) the data
    module yields chunks of K batches and the module takes K steps per training_step."""
    from mnist_lab import fastpath
    from mnist_lab.data import MNISTDataModule
    from mnist_lab.idx import train_size
    from mnist_lab.models import build_model
    from mnist_lab.module import LitClassifier

    plain = OmegaConf.to_container(cfg, resolve=True)  # plain values: checkpoints stay weights_only-loadable
    net = net if net is not None else build_model(**plain["model"])
    fast, _ = fastpath.plan(cfg)
    trainer_args = plain["trainer"]
    train_limit = None
    if fast is not None:
        trainer_args.pop("gradient_clip_val")  # the fast path clips inside its steps
        if fast["compile"] and trainer_args.get("benchmark") is None:
            trainer_args["benchmark"] = True  # compiled convolutions need cuDNN's fastest algorithms (README, Speed)
        train_limit = trainer_args.pop("limit_train_batches")  # counted in batches, not in chunks of them
        if isinstance(train_limit, float):
            n_train = train_size(cfg.data.data_dir) - cfg.data.val_size
            train_limit = int(train_limit * -(-n_train // cfg.data.batch_size))
    datamodule = MNISTDataModule(**plain["data"], input_shape=net.input_shape, seed=cfg.seed,
                                 steps=(cfg.fast.steps or "auto") if fast is not None else None,
                                 train_limit=train_limit)
    optimizer = {k: v for k, v in plain["optimizer"].items() if v is not None}
    module = LitClassifier(net, optimizer=optimizer, model=plain["model"], config=plain, fast=fast,
                           provenance=provenance)
    return build_trainer(cfg, run, trainer_args), module, datamodule


def build_trainer(cfg: DictConfig, run: RunDir, trainer_args: dict):
    """The lightning.Trainer of a run: `trainer_args` (cfg.trainer's, as build_run adapts them), the run's
    loggers, checkpoints and callbacks, and the Slurm plugin where Slurm started the process."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from mnist_lab import runs
    from mnist_lab.callbacks import EpochLines, EpochTime, FitRecord, RunFigures, RunProgressBar, study_callbacks
    from mnist_lab.guards import AtomicCheckpointIO, GracefulInterrupt, NonFiniteGuard, ProcessGroupEnd
    from mnist_lab.loggers import HParams, build_loggers

    quiet_lightning()
    if cfg.trainer.accelerator == "cpu" or (cfg.trainer.accelerator == "auto" and not torch.cuda.is_available()):
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import; on a machine without a GPU driver every
        # torch.cuda.is_available() then loads NVML again, and torch's optimizers ask once a step
        # (README, Speed). A CPU run needs no fork-safe CUDA probe.
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    validate = cfg.data.val_size > 0
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename=runs.BEST,
        monitor="val/acc" if validate else None,  # without validation "best" is the last epoch
        mode="max",
        save_last=not validate,
        enable_version_counter=False,  # a resumed run overwrites best/last instead of adding best-v1
    )
    # Lightning's save_last=True rewrites last.ckpt only in an epoch where the monitored checkpoint was
    # saved: after an epoch without a better val/acc it would be stale. So "last" is a checkpoint of its
    # own, written every epoch.
    last = ModelCheckpoint(dirpath=run.checkpoints, filename=runs.LAST, enable_version_counter=False)
    callbacks = [checkpoint, *([last] if validate else []), NonFiniteGuard(), GracefulInterrupt(run.path),
                 EpochTime(), HParams(), ProcessGroupEnd(), FitRecord()]
    chosen = OmegaConf.to_container(cfg.logger, resolve=True)
    if not cfg.trainer.fast_dev_run:  # a smoke test writes no figures (Lightning drops its loggers too)
        callbacks.append(RunFigures(run.path, chosen, normalized=cfg.data.normalize))
    callbacks.append(EpochLines())  # after the checkpoints: its line says the epoch is saved
    callbacks += study_callbacks(run.path, chosen)  # a trial of hydra/sweeper=optuna (last: pruned ends fit)
    trainer_args = {**trainer_args, "enable_progress_bar": runlog.show_progress_bar(cfg.trainer.enable_progress_bar)}
    if trainer_args["enable_progress_bar"]:
        callbacks.append(RunProgressBar())  # Lightning's own bar, which also counts plain steps
    plugins = [AtomicCheckpointIO()]  # every checkpoint to a temporary name in its folder, then renamed
    if SLURMEnvironment.detect():
        # Slurm started the ranks. Requeueing on preemption or at the time limit is submitit's (its
        # SIGUSR2 handler requeues the job and exits); Lightning's own auto-requeue would race it.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        **trainer_args,
        logger=build_loggers(cfg.logger, run),
        callbacks=callbacks,
        default_root_dir=run.path,
        enable_model_summary=False,  # the Keras-style table replaces it
        use_distributed_sampler=False,  # the datamodule shards its own tensor batches
        plugins=plugins,
    )


def describe_device(trainer, cfg: DictConfig, fast: dict | None) -> str:
    """One line for the start of a run: where it trains, and how (the fast path, or why not)."""
    import torch

    from mnist_lab import fastpath
    from mnist_lab.idx import train_size

    device = trainer.strategy.root_device
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} ({device})"
    else:
        threads = torch.get_num_threads()
        where = f"{device.type.upper()} ({threads} thread{'s' if threads > 1 else ''})"
    if trainer.world_size > 1:
        where += f" x {trainer.world_size} processes"
    if fast is None:
        return f"device: {where}; plain path, one step per training_step ({fastpath.plan(cfg)[1]})"
    n_train = train_size(cfg.data.data_dir) - cfg.data.val_size
    k = cfg.fast.steps or fastpath.auto_steps(device.type, n_train // cfg.data.batch_size)
    how = ", CUDA graphs" if fast["cuda_graph"] and device.type == "cuda" else ""
    how += ", compiled" if fast["compile"] else ""
    return f"device: {where}; fast path: {k} steps per training_step{how}"


def quiet_lightning() -> None:
    """Lightning's INFO lines through the run's handlers (under Hydra: into train.log, not on the console;
    mnist_lab.runlog), and no warnings that concern Lightning's internals or choices made here on purpose."""
    import logging
    import warnings

    if logging.getLogger().handlers:  # Hydra configured the root logger
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        source = logging.getLogger(name)  # where Lightning's rank_zero_info lines come from, tips included
        if not any(isinstance(f, runlog.NoTips) for f in source.filters):
            source.addFilter(runlog.NoTips())  # for every handler, Lightning's own too (a script without Hydra)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")  # val_size=0
    warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy")  # torchmetrics plot
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")  # a local run on a Slurm host
    # A run folder holds its checkpoints: a resumed run writes into it on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # callbacks.EpochLines is a Checkpoint to Lightning; "best" is the first one's, as intended.
    warnings.filterwarnings("ignore", message=r".*\"best\"\)` is called with Trainer configured with multiple")
    # The fast path logs once an epoch, and an epoch is a few training_steps of K steps each.
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")


def continued(cfg: DictConfig) -> tuple[DictConfig, str | None]:
    """The config and checkpoint a run starts from: for resume=<run> or a Slurm job that was requeued,
    the run's saved config and its checkpoints/last.ckpt (checked); otherwise cfg and None."""
    from mnist_lab.errors import CheckpointError, ConfigError

    if cfg.get("resume"):
        from mnist_lab.module import load_checkpoint  # Lightning loads with it: only when there is one to load

        run = RunDir(Path(cfg.resume).expanduser().resolve())
        if not run.config.is_file():
            raise ConfigError(f"resume={cfg.resume}: {run.config} not found; give the folder of a run started by "
                              "python -m mnist_lab.train (it holds config.yaml and checkpoints/)")
        if not run.last_ckpt.is_file():
            raise CheckpointError(f"resume={cfg.resume}: {run.last_ckpt} not found; the run saved no checkpoint "
                                  "yet, so start it again instead")
        saved = saved_config(run, f"resume={cfg.resume}")
        for key in _config.RESUME_MAY_SET:  # this call's values
            if key != "data.data_dir" or data_dir_given():  # else the run's own, where its data was
                OmegaConf.update(saved, key, OmegaConf.select(cfg, key))
        saved.output_dir, saved.resume = str(run.path), str(run.path)
        try:
            _config.validate(saved)  # e.g. its logger may need a package this machine lacks
        except ConfigError as err:
            raise ConfigError(f"resume={cfg.resume}: in its config.yaml, {err}") from None
        ckpt = load_checkpoint(run.last_ckpt, model_name=saved.model.name)
        log.info(f"resuming {shown(run.path)} from {run.last_ckpt.relative_to(run.path)}, saved after step "
                 f"{ckpt.get('global_step', 0)} (epoch {ckpt.get('epoch', 0) + 1})")
        return saved, str(run.last_ckpt)
    from mnist_lab.sweeps import in_sweep

    run = RunDir(cfg.output_dir)
    if (requeued() or in_sweep()) and run.last_ckpt.is_file():  # the same job again: its config is cfg
        from mnist_lab.module import load_checkpoint

        if in_sweep():  # a resumed sweep: the same overrides (sweeps.py checked), but conf/ may have changed
            check_unchanged(cfg, run)
        try:
            load_checkpoint(run.last_ckpt, model_name=cfg.model.name)
        except CheckpointError:  # damaged (a kill mid-write on a filesystem without atomic rename)
            if not in_sweep():
                raise
            runs.set_aside(run.last_ckpt, "no checkpoint this job can resume from")
            return cfg, None
        log.info(f"{'requeued job' if requeued() else 'resumed sweep'}: resuming from {run.last_ckpt}")
        return cfg, str(run.last_ckpt)
    return cfg, None


def data_dir_given() -> bool:
    """Whether this call says where the data is (data.data_dir= or MNIST_LAB_DATA_DIR); train(cfg) from Python
    always does. Otherwise resume= keeps the run's own data folder, so that the command its interrupt message
    prints works as it is."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or "MNIST_LAB_DATA_DIR" in os.environ:
        return True
    return any(o.split("=", 1)[0].lstrip("+~") == "data.data_dir" for o in HydraConfig.get().overrides.task)


def saved_config(run: RunDir, asked: str) -> DictConfig:
    """A run's config.yaml, read and checked against the typed schema; ConfigError (one line, beginning with
    `asked`: what read it, e.g. "resume=<run>") where it was damaged or hand-edited to what the schema cannot
    take."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    from mnist_lab.errors import ConfigError

    started = run.path / ".hydra" / "config.yaml"  # Hydra's record of the config the run started with
    fix = (f"fix it, or restore it from {started.relative_to(run.path)} there (the config the run started with)"
           if started.is_file() else "fix it, or start the run again")
    try:
        loaded = OmegaConf.load(run.config)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{asked}: its config.yaml holds no config keys; {fix}")
        if "logger" not in loaded:  # saved before the logger group: TensorBoard
            loaded.logger = {"tensorboard": {}}
        return OmegaConf.merge(OmegaConf.structured(_config.Config), loaded)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{asked}: its config.yaml is not valid YAML{where}; {fix}") from err
    except OmegaConfBaseException as err:
        key = err.full_key or err.key or "a key"
        raise ConfigError(f"{asked}: its config.yaml holds an invalid {key}: {err.value!r}; {fix}") from err
def check_unchanged(cfg: DictConfig, run: RunDir) -> None:
    """Raise ConfigError where the config a sweep job resumes with differs from the one its run folder saved
    (keys that resume= may set aside)."""
    from mnist_lab.errors import ConfigError
    from mnist_lab.loggers import flatten

    free = (*_config.RESUME_MAY_SET, "output_dir", "resume")
    if run.config.is_file():
        runs.read_config(run.path)  # checked: a damaged one is named in one line
    saved = flatten(OmegaConf.to_container(OmegaConf.load(run.config)) if run.config.is_file() else {})
    now = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [f"{k}={now.get(k)} (saved: {saved.get(k)})" for k in sorted(saved.keys() | now.keys())
               if saved.get(k) != now.get(k) and not k.startswith(free)]
    if changed:
        raise ConfigError(f"{run.path}: an interrupted run of another config ({'; '.join(changed)}); conf/ changed "
                          "since the sweep began: restore it, or give a new hydra.sweep.dir")


def requeued() -> bool:
    """Whether Slurm started this process for a job that was requeued (preempted or at its time limit)."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0")) == 0:
        return False  # asked first: a run's checks come before Lightning is loaded
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    import logging

    from mnist_lab.errors import LockedError, MnistLabError

    logging.captureWarnings(True)  # warnings reach train.log too
    try:
        _config.check_launch(cfg)
        return train(cfg)["test/acc"]  # a float, for Hydra sweepers that optimize
    except LockedError:  # the folder is another process's
        raise
    except MnistLabError:  # e.g. a config value or a data file rejected before the run began
        remove_if_untouched(Path(cfg.output_dir))
        raise


def remove_if_untouched(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra wrote (and the log of the rejection) before the run was
    rejected."""
    if run_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir()):
        import shutil

        shutil.rmtree(run_dir)


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
    if not any(f in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") for f in flags):
        _config.check_keys(overrides)
        if "hydra/launcher=slurm" in overrides:
            check_slurm_devices(overrides)
        if "-m" in flags or "--multirun" in flags:
            check_sweep(overrides)
    from mnist_lab import sweeps

    resume = [Path(o.split("=", 1)[1]).expanduser() for o in overrides if o.startswith("resume=")]
    if resume and sweeps.is_sweep(resume[0]):
        return argv[:1] + sweeps.resume_argv(resume[0].resolve(), flags, overrides)
    for o in overrides:
        if o.startswith("resume=") and not any(x.startswith("hydra.run.dir=") for x in overrides):
            overrides += [f"hydra.run.dir={o.split('=', 1)[1]}", "hydra.output_subdir=.hydra/resume"]
    return argv[:1] + flags + overrides


def check_slurm_devices(overrides: list[str]) -> None:
    """hydra/launcher=slurm asks Slurm for GPUs by the trainer's accelerator; with `auto` the submitting
    machine (often a login node without GPUs) cannot tell, so the jobs could silently run on CPUs."""
    from hydra import compose, initialize_config_dir

    from mnist_lab.errors import ConfigError

    keys = ("trainer", "experiment", "hydra/launcher", "hydra.launcher")
    relevant = [o for o in overrides if o.split("=", 1)[0].lstrip("+~").startswith(keys)]
    if any("," in o or "(" in o for o in relevant):
        return  # a sweep over trainers: each job's own resolution will tell
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=relevant, return_hydra_config=True)
    asks = str(OmegaConf.to_container(cfg.hydra.launcher, resolve=False).get("gpus_per_node"))
    if cfg.trainer.accelerator == "auto" and asks.startswith("${gpus_per_node:"):
        raise ConfigError("hydra/launcher=slurm cannot tell from trainer=auto whether to ask Slurm for GPUs: "
                          "use trainer=gpu (or ddp) for GPU jobs, trainer=cpu for CPU jobs")


def check_sweep(overrides: list[str]) -> None:
    """Lightning's `ddp` re-launch under --multirun (config.check_ddp_relaunch), refused before the sweep begins,
    on the config with the overrides that every job shares (a sweep over trainers: each job checks its own)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        shared = [o for o, p in zip(overrides, parsed, strict=True) if not p.is_sweep_override()]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=shared, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return  # Hydra says what is wrong with the overrides
    _config.check_ddp_relaunch(cfg, multirun=True, launcher=str(cfg.hydra.launcher.get("_target_", "")))


if __name__ == "__main__":
    from mnist_lab.errors import MnistLabError

    try:
        sys.argv = prepare_argv(sys.argv)
    except MnistLabError as err:  # e.g. a config key, or a sweep folder's damaged multirun.yaml
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        sys.exit(str(err))  # one line, before Hydra (and its error handling) starts
    main()
