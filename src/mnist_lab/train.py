"""Train on MNIST, then test the best checkpoint.

    python -m mnist_lab.train                                       # MLP, 5 epochs
    python -m mnist_lab.train model=convnet optimizer.lr=3e-4
    python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2    # the Keras tutorial, 3 seeds
    python -m mnist_lab.train export=true                           # also export the best checkpoint
    python -m mnist_lab.train resume=outputs/runs/<time>            # continue an interrupted run

A run folder (outputs/runs/<time>/, or outputs/sweeps/<time>/<n>_<model>_<overrides>/ under -m)
holds config.yaml (resolved), summary.txt, checkpoints/{best,last}.ckpt, the TensorBoard events and
the run's figures (history, per-class accuracy, mistakes, confusion matrix); `tensorboard --logdir
outputs` shows them. Offline, point data.data_dir= (or MNIST_LAB_DATA_DIR) at a folder holding
MNIST/raw/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lab import config as _config  # registers the typed configs

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def quiet_lightning() -> None:
    """Lightning's INFO lines once (under Hydra its own handler and Hydra's both print them), and no
    warnings that concern Lightning's internals rather than the run."""
    import logging
    import warnings

    if logging.getLogger().handlers:  # Hydra configured the root logger
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).handlers.clear()
            logging.getLogger(name).propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Total length of `list` across ranks is zero")  # val_size=0
    warnings.filterwarnings("ignore", message=r"__array__ implementation doesn't accept a copy")  # torchmetrics plot
    warnings.filterwarnings("ignore", message=r"The `srun` command is available")  # a local run on a Slurm host


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, test on the best checkpoint, and return the test metrics ({"test/acc": ..., "test/loss": ...})."""
    _config.validate(cfg)  # before any data is read or output written
    ckpt_path = None
    if cfg.get("resume"):
        cfg, ckpt_path = resumed(cfg)

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from mnist_lab.callbacks import EpochTime, HistoryPlot, TestFigures
    from mnist_lab.data import MNISTDataModule
    from mnist_lab.guards import GracefulInterrupt, NonFiniteGuard
    from mnist_lab.models import build_model, summary
    from mnist_lab.module import LitClassifier

    quiet_lightning()
    if cfg.trainer.accelerator == "cpu":
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 on import; on a machine without a GPU driver
        # every torch.cuda.is_available() then loads NVML again, and torch's optimizers ask once a step
        # (0.07 ms, 2% of a dense CPU step). A CPU run needs no fork-safe CUDA probe.
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)  # plain values: checkpoints stay weights_only-loadable
    if ckpt_path is None:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(plain))

    torch.set_num_threads(cfg.threads or _config.default_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    net = build_model(**plain["model"])
    table = summary(net)
    print(table)
    write_text(run_dir / "summary.txt", table + "\n")

    datamodule = MNISTDataModule(**plain["data"], input_shape=net.input_shape, seed=cfg.seed)
    optimizer = {k: v for k, v in plain["optimizer"].items() if v is not None}
    module = LitClassifier(net, optimizer=optimizer, model=plain["model"], config=plain)

    validate = cfg.data.val_size > 0
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val/acc" if validate else None,  # without validation "best" is the last epoch
        mode="max",
        save_last=True,
        enable_version_counter=False,  # a resumed run overwrites best/last instead of adding best-v1
    )
    logger = TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False)
    callbacks = [checkpoint, NonFiniteGuard(), GracefulInterrupt(run_dir), EpochTime()]
    if not cfg.trainer.fast_dev_run:  # a smoke test writes no figures (Lightning drops its logger too)
        callbacks += [HistoryPlot(run_dir), TestFigures(run_dir, normalized=cfg.data.normalize)]
    plugins = []
    if SLURMEnvironment.detect():
        # Slurm started the ranks. Requeueing on preemption or at the time limit is submitit's (its
        # SIGUSR2 handler requeues the job and exits); Lightning's own auto-requeue would race it.
        plugins.append(SLURMEnvironment(auto_requeue=False))
        if ckpt_path is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            last = run_dir / "checkpoints" / "last.ckpt"  # a requeued job: go on from its last checkpoint
            if last.is_file():
                from mnist_lab.module import load_checkpoint

                load_checkpoint(last, model_name=cfg.model.name)
                ckpt_path = str(last)
                print(f"requeued job: resuming from {last}")
    trainer = L.Trainer(
        **plain["trainer"],
        logger=logger,
        callbacks=callbacks,
        default_root_dir=run_dir,
        enable_model_summary=False,  # the Keras-style table above replaces it
        use_distributed_sampler=False,  # the datamodule shards its own tensor batches
        plugins=plugins,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    test_ckpt = None if cfg.trainer.fast_dev_run else "best"
    results = trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True)[0]
    metrics = {k: float(v) for k, v in results.items() if k.startswith("test/")}
    print("test: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  ({run_dir})")
    if cfg.export and trainer.is_global_zero:
        from mnist_lab.export import export  # ONNX and friends load only when asked

        export(checkpoint.best_model_path or checkpoint.last_model_path, data_dir=cfg.data.data_dir)
    return metrics


def resumed(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The config saved in the run folder cfg.resume (with this call's threads, progress bar and data
    folder), and its checkpoints/last.ckpt, checked."""
    from mnist_lab.errors import CheckpointError, ConfigError
    from mnist_lab.module import load_checkpoint

    run_dir = Path(cfg.resume).expanduser().resolve()
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={cfg.resume}: {saved} not found; give the folder of a run started by "
                          "python -m mnist_lab.train (it holds config.yaml and checkpoints/)")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise CheckpointError(f"resume={cfg.resume}: {last} not found; the run saved no checkpoint yet, "
                              "so start it again instead")
    old = OmegaConf.merge(OmegaConf.structured(_config.Config), OmegaConf.load(saved))
    load_checkpoint(last, model_name=old.model.name)
    old.threads = cfg.threads
    old.trainer.enable_progress_bar = cfg.trainer.enable_progress_bar
    old.data.data_dir = cfg.data.data_dir
    old.output_dir, old.resume = str(run_dir), str(run_dir)
    return old, str(last)


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from mnist_lab.errors import ConfigError

    try:
        check_resume_overrides(cfg)
        check_ddp_under_multirun(cfg)
        return train(cfg)["test/acc"]  # a float, for Hydra sweepers that optimize
    except ConfigError:
        remove_if_untouched(Path(cfg.output_dir))
        raise


def check_ddp_under_multirun(cfg: DictConfig) -> None:
    """Lightning's `ddp` starts the other ranks by re-running the command line: under --multirun that is
    the whole sweep again, in every rank, and the ranks of one job may get different hyperparameters."""

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from mnist_lab.errors import ConfigError

    launcher = str(HydraConfig.get().launcher.get("_target_", ""))
    several = cfg.trainer.num_nodes > 1 or str(cfg.trainer.devices) not in ("1", "auto")
    if (HydraConfig.get().mode == RunMode.MULTIRUN and cfg.trainer.strategy == "ddp" and several
            and "Slurm" not in launcher and "SLURM_NTASKS" not in os.environ):
        raise ConfigError("trainer.strategy=ddp under --multirun would re-run the whole sweep in every rank: "
                          "use trainer.strategy=ddp_spawn for a local sweep, or hydra/launcher=slurm")


def check_resume_overrides(cfg: DictConfig) -> None:
    """resume= continues a run with its own config: other overrides would silently not apply."""
    from hydra.core.hydra_config import HydraConfig

    from mnist_lab.errors import ConfigError

    if not cfg.get("resume"):
        return
    allowed = ("resume", "threads", "trainer.enable_progress_bar", "data.data_dir")
    extra = [o for o in HydraConfig.get().overrides.task if o.split("=", 1)[0].lstrip("+~") not in allowed]
    if extra:
        raise ConfigError(f"resume= continues a run with its saved config; drop {' '.join(extra)} "
                          "(or start a new run with them)")


def remove_if_untouched(run_dir: Path) -> None:
    """Remove a run folder that holds only what Hydra wrote before the run was rejected."""
    if run_dir.is_dir() and all(p.name in (".hydra", "train.log") for p in run_dir.iterdir()):
        import shutil

        shutil.rmtree(run_dir)


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line as Hydra should see it.

    - -m/--multirun goes before the overrides: argparse stops reading overrides at a flag, so
      `python -m mnist_lab.train experiment=keras_seed -m seed=0,1,2` would otherwise fail.
    - resume=DIR also sets hydra.run.dir=DIR: the resumed run continues in its own folder (Hydra's
      record of this call goes to DIR/.hydra/resume/).
    - A misspelled key fails here with a suggestion ("did you mean ...?").
    """
    args = argv[1:]
    flags = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if not any(f in ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c") for f in flags):
        check_keys(overrides)
    for o in overrides:
        if o.startswith("resume=") and not any(x.startswith("hydra.run.dir=") for x in overrides):
            overrides += [f"hydra.run.dir={o.split('=', 1)[1]}", "hydra.output_subdir=.hydra/resume"]
    return argv[:1] + flags + overrides


def check_keys(overrides: list[str]) -> None:
    """Exit with one line for a key that is neither a config field nor a config group."""
    import difflib

    from mnist_lab.errors import ConfigError

    fields = set(flat_keys(_config.Config))
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in groups:
            options = sorted(p.stem for p in (Path(CONF_DIR) / key).glob("*.yaml"))
            for value in override.split("=", 1)[1].split(","):
                if value not in options + ["null"] and not value.startswith(("glob(", "range(", "choice(")):
                    sys.exit(f"{key}={value}: no such option; choose one of {', '.join(options)}")
        if "=" not in override or key.startswith("hydra") or key in fields or key in groups:
            continue
        close = difflib.get_close_matches(key, sorted(fields | groups), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "python -m mnist_lab.train --cfg job lists the keys"
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise ConfigError(f"unknown config key {key!r}: {hint}")
        sys.exit(f"unknown config key {key!r} in {override!r}: {hint}")


def flat_keys(schema: type, prefix: str = "") -> list[str]:
    """All dotted keys of a config dataclass: data, data.batch_size, ..."""
    import dataclasses

    keys = []
    for f in dataclasses.fields(schema):
        keys.append(prefix + f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys += flat_keys(type(default), prefix + f.name + ".")
    return keys


if __name__ == "__main__":
    sys.argv = prepare_argv(sys.argv)
    main()
