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

The way through a run: cmdline (the command line, checked before Hydra starts) -> main -> train ->
resume.continued (where it starts from) -> assemble.build_run (data, module, trainer) -> trainer.fit/test.
Torch and Lightning load only once the config and the data files passed their checks: a mistake is one
line in about a second.
"""

# ruff: noqa: E402  (the imports after the start-up signal handlers below)
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path


def _while_loading(signum: int, frame: object) -> None:
    sys.exit(f"{signal.Signals(signum).name} received while starting: stopped before the run began, nothing written; "
             "run the command again")


if __name__ == "__main__":  # a signal while the libraries below load is command()'s one line too, not a traceback
    for _sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(_sig) is not signal.SIG_IGN:  # a background job's ignored SIGINT stays ignored
            signal.signal(_sig, _while_loading)

import hydra
from omegaconf import DictConfig, OmegaConf

from mnist_lab import config, console, helptext, runs  # noqa: F401  (helptext: --help's resolver)
from mnist_lab.cmdline import prepare_argv
from mnist_lab.console import log
from mnist_lab.errors import Interrupted, LockedError, MnistLabError, NothingToDo, Stopped, stopping
from mnist_lab.idx import ensure_raw_files
from mnist_lab.resume import continued, finished
from mnist_lab.runs import RunDir, in_sweep, owning_run, result_metrics, said_when_full, shown, write_result, write_text

PHASES = {"sanity_check": "during the sanity check", "train": "during training", "validate": "during validation",
          "test": "during the test"}  # Lightning's RunningStage values, as a stop's line says them
FINISHED: list[Path] = []  # the run folders this process finished (train returned)


def train(cfg: DictConfig, callbacks: Sequence = ()) -> dict[str, float]:
    """Fit, test on the best checkpoint, and return the test metrics ({"test/acc": ..., "test/loss": ...}).
    `callbacks` (Lightning callbacks) come first among the trainer's: a benchmark's timers, say.

    What it prints also goes to the run folder's train.log (console.recorded), an error with its cause."""
    resume = Path(cfg.resume).expanduser() if cfg.get("resume") else None
    # a resumed run's record continues in its own log, where it has one
    run_dir = resume if resume is not None and RunDir(resume).config.is_file() else Path(cfg.output_dir)
    first = console.rank_zero() and int(os.environ.get("NODE_RANK") or 0) == 0  # one process holds the run folder
    at: dict = {}  # the run's trainer, once built: where a signal found it
    with (console.recorded(run_dir, rank_zero=console.rank_zero()),
          said_when_full(run_dir), owning_run(run_dir, take=first)):  # a full disk anywhere: one line
        if first:  # the run's owner: no other process writes into it
            runs.clear_stale_temps(run_dir)  # what a process killed mid-write left (.best.ckpt.tmp-<pid>)
        try:
            with stopping(lambda: phase(at.get("trainer"))) as at["release"]:
                metrics = _train(cfg, callbacks, at)
        except Stopped as stop:
            raise Interrupted(stopped_line(stop, RunDir(at.get("run", run_dir)))) from None
    FINISHED.append(Path(at.get("run", run_dir)))
    return metrics


def phase(trainer) -> str:
    """What a run was doing, for the line of a signal outside the training loop: 'during the test'."""
    if trainer is None:
        return "while starting"
    return PHASES.get(getattr(trainer.state.stage, "value", None), "while finishing")


def stopped_line(stop: Stopped, run: RunDir) -> str:
    """The one line of a run stopped by a signal outside its training loop (GracefulInterrupt says its own):
    what was kept, and how to continue: resume=, or the sweep's command for a job of a sweep."""
    head = f"{stop.name} received {stop.where or 'while starting'}: stopped"
    if run.last_ckpt.is_file():
        return f"{head}, {run.last_ckpt.relative_to(run.path)} kept; {runs.continue_how(run)}"
    if in_sweep():
        return f"{head} before its first checkpoint; the sweep's command starts it again"
    return f"{head} before the first checkpoint: nothing to resume; run the command again"


def _train(cfg: DictConfig, callbacks: Sequence, at: dict) -> dict[str, float]:
    console.quiet_lightning()
    if cfg.get("resume") and (done := finished(cfg.resume)):  # nothing to resume: the run is left as it is
        log.info(done)
        return {k: v for k, v in result_metrics(cfg.resume).items() if k.startswith("test/")}
    if not cfg.get("resume"):  # a resumed run's saved config is validated instead (continued)
        config.validate(cfg)  # before any data is read or output written
    cfg, ckpt_path = continued(cfg)
    # the data files too, before the run folder is made: a missing or damaged file leaves no folder behind
    ensure_raw_files(cfg.data.data_dir, download=cfg.data.download, checksums=cfg.data.verify_checksums)

    import lightning as L  # only now: a mistake above is one line, without waiting for torch
    import torch

    from mnist_lab import provenance
    from mnist_lab.assemble import build_run, describe_device
    from mnist_lab.models import build_model, summary
    from mnist_lab.reporting import FitRecord, OptunaTrial, RunFigures

    run = RunDir(cfg.output_dir)
    at["run"] = run.path
    run.path.mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.to_container(cfg, resolve=True)  # plain values: checkpoints stay weights_only-loadable
    if ckpt_path is None:
        write_text(run.config, OmegaConf.to_yaml(plain))

    torch.set_num_threads(cfg.threads or config.default_threads())
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    record, diff = provenance.collect(cfg.data.data_dir)

    net = build_model(**plain["model"])
    table = summary(net)
    log.info(table)
    write_text(run.summary, table + "\n")

    trainer, module, datamodule = build_run(cfg, run, net, provenance=provenance.summary(record),
                                            callbacks=callbacks)
    trainer.callbacks.append(provenance.Provenance(run, record, diff))  # written by global rank 0
    at["trainer"] = trainer
    if trainer.world_size > 1:  # DDP: the ranks must agree where to stop (Lightning's handling, as in fit)
        at["release"]()
    log.info(describe_device(trainer, module.fast))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fitted = next(c for c in trainer.callbacks if isinstance(c, FitRecord)).fitted()  # a restart's too
    test_ckpt = None if cfg.trainer.fast_dev_run else "best"
    results = trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False, weights_only=True)[0]
    metrics = {k: float(v) for k, v in results.items() if k.startswith("test/")}
    log.info("test: " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()) + f"  ({shown(run.path)})")
    if failed := next((c.failed for c in trainer.callbacks if isinstance(c, RunFigures) and c.failed), None):
        raise failed  # the figures met a full disk: the run is not recorded, so its re-run tests again
    if cfg.export and trainer.is_global_zero:
        from mnist_lab.export import export  # ONNX and friends load only when asked

        checkpoint = trainer.checkpoint_callback
        export(checkpoint.best_model_path or checkpoint.last_model_path, data_dir=cfg.data.data_dir)
    if trainer.is_global_zero:
        write_result(run, {**fitted, **metrics}, finished=provenance.now())
        for trial in (c for c in trainer.callbacks if isinstance(c, OptunaTrial)):
            trial.finish()  # a trial of a study: told complete once its run is recorded
    return metrics


@hydra.main(config_path=config.CONF_DIR, config_name="config", version_base=config.VERSION_BASE)
def main(cfg: DictConfig) -> float:
    logging.captureWarnings(True)  # warnings reach train.log too
    try:
        config.check_launch(cfg)
        return train(cfg)["test/acc"]  # a float, for Hydra sweepers that optimize
    except MnistLabError as err:  # e.g. a config value or a data file rejected before the run began
        run = RunDir(cfg.output_dir)
        if not isinstance(err, LockedError) and run.path.is_dir() and run.untouched():  # only Hydra's, the log
            shutil.rmtree(run.path)  # (a folder another process holds is left alone)
        if in_sweep() or os.environ.get("HYDRA_FULL_ERROR"):
            raise  # the sweep reports its jobs' errors; HYDRA_FULL_ERROR=1 shows the traceback
        sys.exit(str(err))  # the line alone, without Hydra's lines around it (train.log keeps the cause)


def command() -> None:
    """python -m mnist_lab.train: the command line checked, then Hydra's main. A signal outside a run and a
    sweep (while the command starts, or after a run ended) is one line too."""
    try:
        with stopping(lambda: "after the run finished" if FINISHED else "while starting"):
            try:
                sys.argv = prepare_argv(sys.argv)
            except NothingToDo as done:
                print(done)
                sys.exit(0)
            except MnistLabError as err:
                if os.environ.get("HYDRA_FULL_ERROR"):
                    raise
                sys.exit(str(err))  # one line, before Hydra (and its error handling) starts
            main()
    except Stopped as stop:
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        if FINISHED:  # its work is done: said, exit status 0
            print(f"{stop.name} received {stop.where}: nothing lost, its results are in {shown(FINISHED[-1])}")
            sys.exit(0)
        sys.exit(f"{stop.name} received {stop.where}: stopped before the run began, nothing written; run the "
                 "command again")


if __name__ == "__main__":
    command()
