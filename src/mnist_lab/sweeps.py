"""Sweeps that resume: Hydra's grid sweeper, which skips the jobs a sweep folder already finished.

    python -m mnist_lab.train -m model=mlp,convnet seed=0,1,2 hydra.sweep.dir=outputs/sweeps/cmp
    python -m mnist_lab.train -m model=mlp,convnet seed=0,1,2 hydra.sweep.dir=outputs/sweeps/cmp   # again
    python -m mnist_lab.train -m resume=outputs/sweeps/cmp       # the same, with the sweep's saved overrides

The default sweeper (conf/config.yaml: hydra/sweeper=resumable; the plugin in src/hydra_plugins/mnist_lab/)
builds the same jobs, in the same order and with the same numbers, as Hydra's basic sweeper. Run again on
a sweep folder it already wrote, it compares the overrides with the ones saved there (multirun.yaml) and
refuses changed ones in one line, then for each job looks at its run folder:

    finished      result.yaml is there and whole (the run trained and tested; runs.result_problem):
                  skipped, its metrics kept
    interrupted   checkpoints/last.ckpt but no whole result.yaml: launched; the job resumes from last.ckpt
                  (resume.continued), with its config checked against the one it saved; one whose result.yaml
                  is damaged (said in one line) is tested again from there
    not started   launched as new

Jobs keep their numbers and folder names. With the basic launcher the jobs run one at a time, and a
Ctrl-C stops the sweep after the job it interrupts saved its last.ckpt; with hydra/launcher=slurm the jobs
it launches go to Slurm as one array, whatever their numbers. Only global overrides that change where
the data is and how runs show themselves may differ between the runs (config.RESUME_MAY_SET).

No torch at import: the train command's checks (mnist_lab.cmdline) import this module in every
`python -m mnist_lab.train`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf, open_dict, read_write

from mnist_lab import errors, figures, runs, stacking
from mnist_lab.config import RESUME_MAY_SET, override_key
from mnist_lab.errors import ConfigError, DamagedFileError, Interrupted, JobsFailed, MnistLabError, said_alone
from mnist_lab.runs import saved_overrides

log = logging.getLogger(__name__)
FINISHED, INTERRUPTED, NEW = "finished", "interrupted", "not started"


def changed_overrides(saved: Sequence[str], now: Sequence[str]) -> list[str]:
    """The overrides that differ between two sweep command lines, as 'key=now (was: key=saved)' phrases;
    keys in config.RESUME_MAY_SET (resume= among them) may differ."""
    before = {override_key(o): o for o in saved if override_key(o) not in RESUME_MAY_SET}
    after = {override_key(o): o for o in now if override_key(o) not in RESUME_MAY_SET}
    changes = []
    for key in sorted(before.keys() | after.keys(), key=lambda k: (k not in after, k)):
        if key not in before:
            changes.append(f"{after[key]} (new)")
        elif key not in after:
            changes.append(f"no {key} (was: {before[key]})")
        elif before[key] != after[key]:
            changes.append(f"{after[key]} (was: {before[key]})")
    return changes


def resume_argv(sweep_dir: Path, flags: list[str], overrides: list[str]) -> list[str]:
    """The command line that continues the sweep in `sweep_dir` (`-m resume=<sweep folder>`): its saved
    overrides, Hydra's included (launcher, partition, ...), and hydra.sweep.dir; of this call's overrides only
    resume= itself, config.RESUME_MAY_SET and hydra.* ones (how the jobs run, not what they compute)."""
    saved = saved_overrides(sweep_dir)
    assert saved is not None
    extra = [o for o in overrides if override_key(o) not in RESUME_MAY_SET and not override_key(o).startswith("hydra")]
    if extra:
        raise ConfigError(f"resume={sweep_dir} continues the sweep with its saved overrides; drop {' '.join(extra)} "
                          "(or start a new sweep with them)")
    given = [o for o in overrides if override_key(o) != "resume"]
    keys = {override_key(o) for o in given}
    task = [o for o in saved[0] if override_key(o) not in keys]
    hydra = [o for o in saved[1] if override_key(o) not in keys | {"hydra.mode", "hydra.sweep.dir"}]
    multirun = [] if {"-m", "--multirun"} & set(flags) else ["-m"]
    return [*multirun, *flags, *hydra, *task, *given, f"hydra.sweep.dir={sweep_dir}"]


def owned_sweep(sweeper: Any, arguments: list[str]) -> list[JobReturn]:
    """sweep(), holding the sweep folder's lock (runs.Lock): a second copy of the sweep stops in one line. Jobs
    that Slurm runs side by side each hold their own run folder's lock."""
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    new = not sweep_dir.exists()
    command = f"python -m mnist_lab.train -m resume={runs.shown(sweep_dir)}"
    try:
        with said_alone(), runs.owned(sweep_dir / runs.LOCK, "sweep", sweep_dir, "run the same command again"), \
                figures.drawn_at_the_end(f"draw the rest with python -m mnist_lab.figures {runs.shown(sweep_dir)}"):
            try:  # a signal outside a job's run (which says its own): between jobs, as the sweep starts
                with errors.stopping(lambda: "between jobs" if runs.find_runs(sweep_dir) else "as the sweep started"):
                    return sweep(sweeper, arguments)
            except errors.Stopped as stop:
                done = sum(1 for f in runs.find_runs(sweep_dir) if runs.finished(f))
                raise Interrupted(f"{stop.name} received {stop.where}: the sweep stopped, {done} jobs finished "
                                  f"and kept; continue it with {command}") from None
    finally:
        if new:  # refused before it wrote anything: no empty folder left behind
            with contextlib.suppress(OSError):
                sweep_dir.rmdir()


def sweep(sweeper: Any, arguments: list[str]) -> list[JobReturn]:
    """The plugin's sweep(): `sweeper` is a hydra BasicSweeper set up by Hydra (config, launcher, context)."""
    parser = OverridesParser.create(config_loader=sweeper.hydra_context.config_loader)
    batches = sweeper.split_arguments(parser.parse_overrides(sweeper._parse_config() + list(arguments)),
                                      sweeper.max_batch_size)
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    saved = saved_overrides(sweep_dir)
    if saved is not None:
        changes = changed_overrides(saved[0], list(sweeper.config.hydra.overrides.task))
        if changes:
            raise ConfigError(f"this sweep began with other overrides: {'; '.join(changes)}; continue it with "
                              f"python -m mnist_lab.train -m resume={runs.shown(sweep_dir)}, or give a new "
                              "hydra.sweep.dir")
    name_by_what_varies(sweeper.config, [o for batch in batches for o in batch], saved)
    jobs, num = [], 0
    for batch in batches:
        jobs.append([(num + i, list(overrides)) for i, overrides in enumerate(batch)])
        num += len(batch)
    # composing every job's config here also finds composition errors before any job runs, as Hydra's does
    composed = {n: job_config(sweeper, n, overrides) for batch in jobs for n, overrides in batch}
    folders = {n: job_folder(cfg) for n, cfg in composed.items()}
    resuming = saved is not None or any(f.is_dir() for f in folders.values())
    if resuming:
        check_folders(sweep_dir, folders, jobs)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs.write_text(sweep_dir / runs.SWEEP_RECORD, OmegaConf.to_yaml(sweeper.config))

    states = {n: job_state(folder) for n, folder in folders.items()}
    if resuming:
        counts = {s: sum(v == s for v in states.values()) for s in (FINISHED, INTERRUPTED, NEW)}
        log.info(f"Resuming sweep {sweep_dir}: {len(states)} jobs, {counts[FINISHED]} finished (kept), "
                 f"{counts[INTERRUPTED]} interrupted (resumed from their last.ckpt), "
                 f"{counts[NEW]} to run from the start")
        for n, state in states.items():
            if state == FINISHED:
                log.info(f"\t#{n} : finished, kept: {folders[n].name}  {read_result(folders[n])}")
                runs.clear_stale_temps(folders[n])  # a figure whose drawing a killed sweep cut short
                complete_figures(folders[n])
            elif runs.RunDir(folders[n]).result.exists():
                again = "tested again from its last.ckpt" if state == INTERRUPTED else "trained again"
                log.warning(f"\t#{n} : {runs.shown(runs.RunDir(folders[n]).result)} is not a whole record "
                            f"({runs.result_problem(folders[n])}): {again}")
            elif state == INTERRUPTED:
                log.info(f"\t#{n} : interrupted, resumes from {runs.RunDir(folders[n]).restart_checkpoint()}")

    returns: dict[int, JobReturn] = {}
    for batch in jobs:
        for n, overrides in batch:
            if states[n] == FINISHED:
                returns[n] = kept_return(folders[n], overrides)
        todo = [(n, o) for n, o in batch if states[n] != FINISHED]
        asked = sweeper.config.get("stack", 1) > 1 or any(override_key(o) == "stack" for _, job in todo for o in job)
        stacks = stacking.plan({n: composed[n] for n, _ in todo}, todo, folders) if asked else None
        launches = stacking.launch(sweeper.launcher, stacks, launch, sweeper.train_stack) if stacks else \
            ((group, launch(sweeper.launcher, group)) for group in groups(sweeper.launcher, todo))
        for group, returned in launches:
            for (n, _), ret in zip(group, returned, strict=True):
                returns[n] = ret
                if ret.status == JobStatus.FAILED and isinstance(ret._return_value, Interrupted):
                    done = sum(1 for f in folders.values() if runs.finished(f))
                    kept = (f"its {runs.LAST}.ckpt saved" if runs.RunDir(folders[n]).last_ckpt.is_file() else
                            "before its first checkpoint")
                    raise Interrupted(f"{str(ret._return_value).split(':', 1)[0]}: job {n} stopped, {kept}; {done} of "
                                      f"{len(folders)} jobs finished. Continue the sweep with python -m "
                                      f"mnist_lab.train -m resume={runs.shown(sweep_dir)}")
    ordered = [returns[n] for n in sorted(returns)]
    failed = [ret for ret in ordered if ret.status == JobStatus.FAILED]
    if failed and isinstance(failed[0]._return_value, MnistLabError):  # each said in its line and sweep.log
        raise JobsFailed(f"{len(failed)} of {len(ordered)} jobs failed, each said why above and in "
                         f"{runs.shown(sweep_dir / runs.SWEEP_LOG)}; the others finished: fix it and run the same "
                         "command again (finished jobs are kept)")
    for ret in failed:
        _ = ret.return_value  # an unexpected error: raised with its traceback, as Hydra's sweeper does
    return ordered


EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"  # the keys left out of run folders' names


def constant_keys(jobs: list[list[str]]) -> list[str]:
    """The keys that every one of a sweep's jobs (their override lists) sets to the same value, in order."""
    values: dict[str, set[str]] = {}
    for overrides in jobs:
        for o in overrides:
            values.setdefault(override_key(o).split("@", 1)[0], set()).add(o.split("=", 1)[-1])
    return [k for k, v in values.items() if len(v) == 1]


def name_by_what_varies(config: Any, jobs: list[list[str]], saved: tuple[list[str], list[str]] | None) -> None:
    """Run folders named by the keys the sweep varies (0_mlp_seed:0), its constants said once in its record:
    the constant keys join hydra.job.config.override_dirname.exclude_keys, through a Hydra override on the
    sweep's config that every job composes with (and that the record keeps for resume=). Left alone where
    the command line sets exclude_keys itself, and for a sweep begun without it: its folders keep their names."""
    if any(override_key(o) == EXCLUDE_KEYS for o in config.hydra.overrides.hydra):
        return
    if saved is not None and not any(override_key(o) == EXCLUDE_KEYS for o in saved[1]):
        return
    keys = list(config.hydra.job.config.override_dirname.exclude_keys)
    keys += [k for k in constant_keys(jobs) if k not in keys]
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.overrides.hydra.append(f"{EXCLUDE_KEYS}=[{','.join(keys)}]")
        config.hydra.job.config.override_dirname.exclude_keys = keys


def job_config(sweeper: Any, num: int, overrides: list[str]) -> Any:
    """Job `num`'s whole config (Hydra's section included), composed as the launcher composes it."""
    cfg = sweeper.hydra_context.config_loader.load_sweep_config(sweeper.config, overrides)
    with open_dict(cfg):
        cfg.hydra.job.num = cfg.hydra.job.id = num
    return cfg


def job_folder(cfg: Any) -> Path:
    """The run folder that a job gets (its job_config): hydra.sweep.dir/hydra.sweep.subdir, resolved as run_job
    does."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        return Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    finally:
        HydraConfig.instance().cfg = previous


def check_folders(sweep_dir: Path, folders: dict[int, Path], jobs: list) -> None:
    """Every run folder already in the sweep folder must be the one its job gets now, with the same overrides."""
    def fixed(overrides: list[str]) -> list[str]:
        return [o for o in overrides if override_key(o) not in RESUME_MAY_SET]

    overrides = {n: o for batch in jobs for n, o in batch}
    names = {f.name: n for n, f in folders.items()}
    for found in sorted(p for p in sweep_dir.iterdir() if runs.RunDir(p).overrides.is_file()):
        recorded = runs.RunDir(found).saved_overrides("restore it, or move that run folder out of the sweep (its job "
                                                      "then runs again)")
        n = names.get(found.name)
        if n is None or fixed(recorded) != fixed(overrides[n]):
            raise ConfigError(f"{found.name} is no job of this command (the sweep's jobs changed): continue the "
                              f"sweep with python -m mnist_lab.train -m resume={runs.shown(sweep_dir)}")


def groups(launcher: Any, jobs: list[tuple[int, list[str]]]) -> list[list[tuple[int, list[str]]]]:
    """How the jobs go to the launcher: one call each with the basic launcher (a Ctrl-C then stops the
    sweep), all at once where the launcher takes numbered jobs (Slurm), else runs of consecutive numbers."""
    # imported here, not above: Hydra's plugin scan executes its core plugins' modules again, so a class
    # taken from them before the scan is not the class of the launcher it builds
    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    if not jobs:
        return []
    if isinstance(launcher, BasicLauncher):
        return [[job] for job in jobs]
    if hasattr(launcher, "launch_numbered"):
        return [jobs]
    consecutive: list[list[tuple[int, list[str]]]] = [[jobs[0]]]
    for job in jobs[1:]:
        if job[0] == consecutive[-1][-1][0] + 1:
            consecutive[-1].append(job)
        else:
            consecutive.append([job])
    return consecutive


def launch(launcher: Any, group: list[tuple[int, list[str]]]) -> Sequence[JobReturn]:
    if hasattr(launcher, "launch_numbered"):
        return launcher.launch_numbered(group)
    return launcher.launch([o for _, o in group], initial_job_idx=group[0][0])


def job_state(folder: Path) -> str:
    run = runs.RunDir(folder)
    if runs.finished(folder):
        return FINISHED
    if run.restart_checkpoint() is not None:  # its last.ckpt, or a best.ckpt a full disk left alone
        return INTERRUPTED
    return NEW


def complete_figures(folder: Path) -> None:
    """Draw the figures a finished job lacks: a sweep's jobs hand their drawing to worker processes
    (mnist_lab.figures), which a killed sweep takes with it."""
    if not runs.RunDir(folder).test_outputs.is_file():
        return
    lacking = figures.missing(folder)
    if lacking:
        try:
            figures.saved_payload(folder)  # checked before the drawing: a damaged one is said, not drawn
        except DamagedFileError as err:
            log.warning(f"\t     {err}")
            return
        log.info(f"\t     its figures were not drawn ({', '.join(lacking)}: the sweep stopped first); drawing them "
                 "beside the jobs")
        figures.redraw(folder, background=True)


def read_result(folder: Path) -> str:
    """A finished run's test metrics, for the log: 'test/acc=0.9812 test/loss=0.0621'."""
    metrics = runs.result_metrics(folder)
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("test/"))


def kept_return(folder: Path, overrides: list[str]) -> JobReturn:
    """The JobReturn of a job that a resumed sweep skipped: its saved test accuracy, as the job returned it."""
    ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED, working_dir=str(folder))
    ret.return_value = runs.result_metrics(folder).get("test/acc")
    return ret
