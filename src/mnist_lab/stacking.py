"""Stacked sweeps: the jobs of a sweep that differ only in what a stacked model carries per member (the seed,
the optimizer's numeric settings) trained together by stack.train_stack, each job still a Hydra job of its own.

    python -m mnist_lab.train -m seed=0,1,2,3,4,5,6,7,8,9 stack=8        # two stacks: jobs 0-7, then 8 and 9
    python -m mnist_lab.train -m seed=0,1 optimizer.lr=1e-3,3e-3 model=mlp,convnet stack=4   # a stack per model

plan() groups the sweep's unfinished jobs: the same config but for the carried keys -> one group, cut into
stacks of at most `stack` members in job order; a job that cannot stack (several devices, a precision other
than 32-true, ...) runs alone, and a line says why. One line says how the jobs were grouped.

run_stack() starts each member as Hydra's run_job starts a job (its config, number, run folder, .hydra/
files, the callbacks' on_job_start), calls stack.train_stack once for them all, then ends each one as
run_job does (its JobReturn, on_job_end: its sweep.log line). The resumable sweeper (sweeps.py) runs the
stacks one after the other with the basic launcher; hydra/launcher=slurm makes each stack one task of a
Slurm array (SlurmLauncher.launch_stacks).

No torch at import: sweeps imports this module in every sweep. stack.train_stack reaches run_stack from the
Hydra plugins (src/hydra_plugins/mnist_lab/), which import it when a stack trains.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from mnist_lab import config
from mnist_lab.config import override_key
from mnist_lab.errors import LockedError, MnistLabError

log = logging.getLogger(__name__)
Job = tuple[int, list[str]]  # a sweep job: its number, its overrides


# The config keys a stack carries per member besides the seed: each optimizer's numeric settings that
# stack.StackedOptimizer takes per member (its STACKABLE, less what the config has no key for; a test checks).
CARRIED = {
    "rmsprop": ("lr", "alpha", "eps", "weight_decay", "momentum"),
    "keras_rmsprop": ("lr", "rho", "eps"),
    "adam": ("lr", "eps", "weight_decay"),
    "sgd": ("lr", "momentum", "weight_decay"),
}


def carried(optimizer: str) -> tuple[str, ...]:
    """The config keys that a stack carries per member: seed, and the optimizer's numeric settings."""
    return ("seed", *(f"optimizer.{k}" for k in CARRIED.get(optimizer, ())))


def cannot_stack(cfg: Any) -> str | None:
    """Why a job's config cannot train as a member of a stack (a phrase), or None where it can."""
    trainer = cfg.trainer
    if str(trainer.strategy) not in ("auto", "single_device") or trainer.num_nodes != 1:
        return f"trainer.strategy={trainer.strategy} trainer.num_nodes={trainer.num_nodes}: DDP trains one model " \
               "over several processes"
    if str(trainer.devices) not in ("1", "[0]"):
        return f"trainer.devices={trainer.devices}: a stack trains on one device"
    if str(trainer.precision) not in ("32-true", "32"):
        return f"trainer.precision={trainer.precision}: a stack trains in 32-true"
    if cfg.optimizer.name not in CARRIED:
        return f"optimizer.name={cfg.optimizer.name} has no stacked step"
    if trainer.gradient_clip_val is not None:
        return f"trainer.gradient_clip_val={trainer.gradient_clip_val}: a stack does not clip gradients"
    if trainer.fast_dev_run:
        return "trainer.fast_dev_run: a smoke test runs one batch"
    if cfg.get("resume"):
        return "resume= continues one run"
    return None


def shared_part(cfg: Any) -> str:
    """What the members of one stack must share: the job's config less its carried keys, as text."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    for key in carried(cfg.optimizer.name):
        section, _, name = key.rpartition(".")
        (plain[section] if section else plain).pop(name, None)
    return json.dumps(plain, sort_keys=True, default=str)


def resumes_from(folder: Path) -> int | None:
    """The epoch an interrupted job's last.ckpt was saved in (members of a stack resume from the same epoch);
    None where the job starts from the beginning."""
    from mnist_lab.runs import RunDir

    last = RunDir(folder).last_ckpt
    if not last.is_file():
        return None
    import torch

    try:
        return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("epoch", 0))
    except Exception:  # damaged: the job's own run says so, and sets it aside
        return -1


def plan(configs: dict[int, Any], jobs: Sequence[Job], folders: dict[int, Path]) -> list[list[Job]] | None:
    """The jobs in stacks (lists of jobs, by their first number; a stack of one is a job alone), said in one line,
    with a line for each job that cannot stack; None where no job asks for stack > 1."""
    if not jobs or all(configs[n].get("stack", 1) <= 1 for n, _ in jobs):
        return None
    by_part: dict[str, list[Job]] = {}
    alone: dict[int, str] = {}
    for n, overrides in jobs:
        cfg = configs[n]
        why = cannot_stack(cfg) if cfg.get("stack", 1) > 1 else "stack=1"
        if why is None and cfg.hydra.job.get("chdir"):
            why = "hydra.job.chdir=true: a stack's members share one working directory"
        if why is not None:
            alone[n] = why
            continue
        epoch = resumes_from(folders[n])
        by_part.setdefault(json.dumps([shared_part(cfg), epoch]), []).append((n, list(overrides)))
    stacks: list[list[Job]] = [[job] for job in jobs if job[0] in alone]
    for members in by_part.values():
        size = configs[members[0][0]].stack
        stacks += [members[i:i + size] for i in range(0, len(members), size)]
    stacks.sort(key=lambda s: s[0][0])
    log.info(grouping_line(configs, jobs, stacks, alone))
    for n, why in alone.items():
        if why != "stack=1":
            log.info(f"\t#{n} : alone: {why}")
    return stacks


def grouping_line(configs: dict[int, Any], jobs: Sequence[Job], stacks: list[list[Job]], alone: dict[int, str]) -> str:
    """stack=8: 12 jobs in 2 stacks, #0-7 and #8-9 [model=mlp], and 2 alone (#10, #11)."""
    values: dict[str, set[str]] = {}
    for _, overrides in jobs:
        for o in overrides:
            values.setdefault(override_key(o), set()).add(o)
    stacked = [s for s in stacks if len(s) > 1]
    single = [s[0][0] for s in stacks if len(s) == 1]

    def numbers(nums: list[int]) -> str:
        contiguous = len(nums) > 2 and nums == list(range(nums[0], nums[-1] + 1))
        return f"#{nums[0]}-{nums[-1]}" if contiguous else ", ".join(f"#{n}" for n in nums)

    def described(stack: list[Job]) -> str:
        keep = carried(configs[stack[0][0]].optimizer.name)
        what = [o for o in stack[0][1] if len(values[override_key(o)]) > 1 and override_key(o) not in keep]
        return numbers([n for n, _ in stack]) + (f" [{' '.join(what)}]" if what else "")

    sizes = sorted({configs[n].get("stack", 1) for n, _ in jobs})
    plural = lambda n: "s" * (n != 1)  # noqa: E731
    line = f"stack={','.join(map(str, sizes))}: {len(jobs)} job{plural(len(jobs))} in {len(stacked)} " \
           f"stack{plural(len(stacked))}"
    if stacked:
        line += ", " + "; ".join(described(s) for s in stacked)
    if single:
        line += f"; {len(single)} alone ({numbers(single)})"
    return line


TrainStack = Callable[[list[Any]], list[Any]]  # stack.train_stack, handed down by the Hydra plugins


def launch(launcher: Any, stacks: list[list[Job]], alone: Callable[[Any, list[Job]], Sequence[JobReturn]],
           train_stack: TrainStack) -> Iterator[tuple[list[Job], Sequence[JobReturn]]]:
    """(jobs, their returns) as each launch ends: with hydra/launcher=slurm all stacks as one Slurm array, a task
    per stack; else each stack in turn in this process (train_stack), a job alone through `alone` (the sweep's
    own launch)."""
    if hasattr(launcher, "launch_stacks"):
        yield [job for stack in stacks for job in stack], launcher.launch_stacks(stacks)
        return
    for stack in stacks:
        if len(stack) == 1:
            yield stack, alone(launcher, stack)
        else:
            yield stack, run_stack(launcher.hydra_context, launcher.task_function, launcher.config, stack, train_stack)


_JOBS: dict[str, DictConfig] = {}  # run folder -> its job's whole config (Hydra's), while its stack trains


@contextlib.contextmanager
def as_job(cfg: Any) -> Iterator[None]:
    """Inside the block, HydraConfig is that of the member of the stack whose run folder is cfg.output_dir (its
    overrides, job number, Optuna trial): what a job alone finds there. Nothing changes outside a stack."""
    full = _JOBS.get(str(cfg.output_dir))
    if full is None:
        yield
        return
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(full)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = previous


def run_stack(hydra_context: Any, task_function: Any, sweep_config: DictConfig, stack: Sequence[Job],
              train_stack: TrainStack, job_id: str | None = None) -> list[JobReturn]:
    """Train the jobs of `stack` with one train_stack call (stack.train_stack), each a Hydra job as run_job
    makes it: its number and job id (Slurm's where given), run folder, .hydra/{config,hydra,overrides}.yaml,
    the callbacks' on_job_start and on_job_end (sweep.log), and its JobReturn (the test accuracy, or the error)."""
    from hydra.core.utils import _flush_loggers, _save_config, configure_log, env_override, setup_globals

    setup_globals()
    configure_log(sweep_config.hydra.hydra_logging, sweep_config.hydra.verbose)
    Path(str(sweep_config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    log.info(f"Training a stack of {len(stack)} jobs")
    logging.captureWarnings(True)  # as main() does: warnings reach train.log too
    callbacks = hydra_context.callbacks
    previous = HydraConfig.instance().cfg
    members: list[tuple[DictConfig, JobReturn, DictConfig]] = []  # (whole config, its return, its task config)
    try:
        for num, overrides in stack:
            log.info(f"\t#{num} : {' '.join(o for o in overrides if not o.startswith('hydra.'))}")
            cfg = hydra_context.config_loader.load_sweep_config(sweep_config, list(overrides))
            with open_dict(cfg):
                cfg.hydra.job.id = job_id if job_id is not None else num
                cfg.hydra.job.num = num
            HydraConfig.instance().set_config(cfg)
            output_dir = os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")),
                                      str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
            with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
                cfg.hydra.runtime.output_dir = os.path.abspath(output_dir)
            HydraConfig.instance().set_config(cfg)
            task_cfg = copy.deepcopy(cfg)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            ret = JobReturn(cfg=task_cfg, hydra_cfg=copy.deepcopy(HydraConfig.instance().cfg),
                            overrides=OmegaConf.to_container(cfg.hydra.overrides.task), working_dir=os.getcwd())
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            configure_log(cfg.hydra.job_logging, cfg.hydra.verbose)
            if cfg.hydra.output_subdir is not None:
                record = Path(cfg.hydra.runtime.output_dir) / str(cfg.hydra.output_subdir)
                _save_config(task_cfg, "config.yaml", record)
                _save_config(ret.hydra_cfg, "hydra.yaml", record)
                _save_config(cfg.hydra.overrides.task, "overrides.yaml", record)
            with env_override(cfg.hydra.job.env_set):
                callbacks.on_job_start(config=cfg, task_function=task_function)
            resolved = copy.deepcopy(task_cfg)  # output_dir and friends, read while this job's Hydra config is set
            OmegaConf.resolve(resolved)
            try:  # a member whose config cannot work fails alone, before the stack trains
                config.check_launch(resolved, cfg.hydra)
                config.validate(resolved)
            except MnistLabError as err:
                ret.return_value, ret.status = err, JobStatus.FAILED
            members.append((cfg, ret, resolved))

        training = [m for m in members if m[1].status != JobStatus.FAILED]
        if training:
            HydraConfig.instance().set_config(training[0][0])
        _JOBS.update({str(resolved.output_dir): cfg for cfg, _, resolved in training})
        try:
            with env_override(members[0][0].hydra.job.env_set):
                results = train_stack([resolved for _, _, resolved in training]) if training else []
        except Exception as err:  # the stack as a whole stopped (it could not be built, a signal): every member's
            results = [err] * len(training)
        finally:
            for _, _, resolved in training:
                _JOBS.pop(str(resolved.output_dir), None)
        for (_, ret, _), result in zip(training, results, strict=True):
            if isinstance(result, BaseException):
                ret.return_value, ret.status = result, JobStatus.FAILED
            else:
                ret.return_value, ret.status = result["test/acc"], JobStatus.COMPLETED

        from hydra.core.utils import JobRuntime

        for cfg, ret, resolved in members:
            HydraConfig.instance().set_config(cfg)
            error = ret._return_value if ret.status == JobStatus.FAILED else None
            run = Path(str(resolved.output_dir))
            if isinstance(error, MnistLabError) and not isinstance(error, LockedError) and run.is_dir():
                from mnist_lab.runs import RunDir

                if RunDir(run).untouched():  # as main() leaves a job refused before its run began
                    shutil.rmtree(run)
            ret.task_name = JobRuntime.instance().get("name")
            _flush_loggers()
            callbacks.on_job_end(config=cfg, job_return=ret)
        return [ret for _, ret, _ in members]
    finally:
        HydraConfig.instance().cfg = previous
