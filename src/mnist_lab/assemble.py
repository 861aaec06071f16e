"""A run's parts, assembled from its config: the net, the fast-path plan (decided once, here), the data
module, LitClassifier and the lightning.Trainer with the run's loggers, checkpoints and callbacks.
train() fits what build_run returns; scripts/bench.py times epochs through the same."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from mnist_lab import console, fastpath, runs
from mnist_lab.data import MNISTDataModule
from mnist_lab.guards import AtomicCheckpointIO, GracefulInterrupt, NonFiniteGuard, ProcessGroupEnd
from mnist_lab.idx import train_size
from mnist_lab.loggers import HParams, build_loggers
from mnist_lab.models import build_model
from mnist_lab.module import LitClassifier
from mnist_lab.reporting import EpochLines, EpochTime, FitRecord, RunFigures, RunProgressBar, study_callbacks
from mnist_lab.runs import RunDir


def build_run(cfg: DictConfig, run: RunDir, net: torch.nn.Module | None = None, provenance: dict | None = None,
              callbacks: Sequence[L.Callback] = ()) -> tuple[L.Trainer, LitClassifier, MNISTDataModule]:
    """(trainer, module, datamodule) of a run, as train() fits them. `net` defaults to a fresh one from
    cfg.model; `callbacks` come first among the trainer's (a benchmark's timers). On the fast path
    (module.fast, a fastpath.FastPlan) the data module yields chunks of K batches and the module takes K
    steps per training_step."""
    plain = OmegaConf.to_container(cfg, resolve=True)  # plain values: checkpoints stay weights_only-loadable
    net = net if net is not None else build_model(**plain["model"])
    n_train = train_size(cfg.data.data_dir) - cfg.data.val_size
    plan = fastpath.plan(cfg, device_type(cfg.trainer.accelerator), n_train // cfg.data.batch_size)
    trainer_args = dict(plain["trainer"])  # a copy: the module's hyperparameters keep every trainer key
    train_limit = None
    if plan.fast:
        trainer_args.pop("gradient_clip_val")  # the fast path clips inside its steps
        if plan.compile and trainer_args.get("benchmark") is None:
            trainer_args["benchmark"] = True  # compiled convolutions need cuDNN's fastest algorithms (README, Speed)
        train_limit = trainer_args.pop("limit_train_batches")  # counted in batches, not in chunks of them
        if isinstance(train_limit, float):
            train_limit = int(train_limit * -(-n_train // cfg.data.batch_size))
    datamodule = MNISTDataModule(**plain["data"], input_shape=net.input_shape, seed=cfg.seed, steps=plan.steps,
                                 train_limit=train_limit)
    optimizer = {k: v for k, v in plain["optimizer"].items() if v is not None}
    module = LitClassifier(net, optimizer=optimizer, model=plain["model"], config=plain, fast=plan,
                           provenance=provenance)
    return build_trainer(cfg, run, trainer_args, plan, callbacks), module, datamodule


def device_type(accelerator: str) -> str:
    """The kind of device a trainer.accelerator choice trains on here: "cuda" for a GPU (auto: where one is
    visible), else the accelerator's own name (cpu)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu" if accelerator == "auto" else accelerator


def build_trainer(cfg: DictConfig, run: RunDir, trainer_args: dict, plan: fastpath.FastPlan,
                  extra: Sequence[L.Callback] = ()) -> L.Trainer:
    """The lightning.Trainer of a run: `trainer_args` (cfg.trainer's, as build_run adapts them), the run's
    loggers, checkpoints and callbacks (`extra` first), and the Slurm plugin where Slurm started the process."""
    console.quiet_lightning()
    if device_type(cfg.trainer.accelerator) == "cpu":
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
    callbacks = [*extra, checkpoint, *([last] if validate else []), NonFiniteGuard(), GracefulInterrupt(run.path),
                 EpochTime(), HParams(), ProcessGroupEnd(), FitRecord()]
    chosen = OmegaConf.to_container(cfg.logger, resolve=True)
    if not cfg.trainer.fast_dev_run:  # a smoke test writes no figures (Lightning drops its loggers too)
        callbacks.append(RunFigures(run.path, chosen, normalized=cfg.data.normalize))
    callbacks.append(EpochLines())  # after the checkpoints: its line says the epoch is saved
    callbacks += study_callbacks(run.path, chosen)  # a trial of hydra/sweeper=optuna (last: pruned ends fit)
    trainer_args = {**trainer_args, "enable_progress_bar": console.show_progress_bar(cfg.trainer.enable_progress_bar)}
    if trainer_args["enable_progress_bar"]:
        callbacks.append(RunProgressBar(plan.steps))  # Lightning's own bar, counting chunks on the fast path
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


def describe_device(trainer: L.Trainer, plan: fastpath.FastPlan) -> str:
    """One line for the start of a run: where it trains, and how (the fast path, or why not)."""
    device = trainer.strategy.root_device
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} ({device})"
    else:
        threads = torch.get_num_threads()
        where = f"{device.type.upper()} ({threads} thread{'s' if threads > 1 else ''})"
    if trainer.world_size > 1:
        where += f" x {trainer.world_size} processes"
    return f"device: {where}; {plan.describe()}"
