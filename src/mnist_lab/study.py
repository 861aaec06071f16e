"""Hyperparameter search with Optuna, as a Hydra sweeper (hydra/sweeper=optuna; the plugin is
src/hydra_plugins/mnist_lab_optuna/, its config conf/hydra/sweeper/optuna.yaml).

    python -m mnist_lab.train -m hydra/sweeper=optuna hydra.sweep.dir=outputs/studies/lr hydra.sweeper.n_trials=12 \
        'optimizer.lr=tag(log, interval(1e-5, 1.0))' 'model=choice(mlp,convnet)'

writes into the sweep folder: optuna.journal (the study), a run folder per trial, named by trial number
(<trial>_<model>_<searched values>/, each with a trial.yaml: state, value, epochs, error), best.yaml, and
optimization_history.png, param_importances.png, slice.png, intermediate_values.png. Running the same command
again continues the study until it holds n_trials finished or pruned trials.

How it runs. The sweeper asks Optuna for n_jobs trials and launches them as one batch on the sweep's
launcher (hydra/launcher=slurm: a Slurm job each). Each job finds its trial number in its own Hydra config
(hydra.sweeper.trial) and, through reporting.OptunaTrial, reports the metric after every validation, stops
when the pruner says so, and tells the study how the trial ended; so a trial's outcome reaches the study even
when the sweeper is gone. The sweeper records as failed, with its error, a trial whose job ended without
telling, and launches the next batch.

The storage is Optuna's JournalStorage on a file: an append-only log whose writers take a lock made with a
symlink (atomic on NFS too), shared by every process on every host that sees the file. Trials that a stopped
sweep left running are recorded as failed when the study continues; no trial number runs twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from mnist_lab import config, runs, sweeps
from mnist_lab.config import flatten
from mnist_lab.errors import ConfigError, Interrupted, ObjectiveError, Stopped, StudyError
from mnist_lab.runs import RunDir, cut_torn_tail, owned, write_text

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("mnist_lab")
JOURNAL = "optuna.journal"  # in the sweep folder, unless hydra.sweeper.storage says otherwise
PLOTS = ("optimization_history", "param_importances", "slice", "intermediate_values")  # PNGs in the sweep folder


# The search space -------------------------------------------------------------------------------

def search_space(overrides: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Optuna distributions for the sweep overrides, and the plain overrides every trial gets.

    choice(a, b) -> categorical; interval(lo, hi) -> float, tag(log, interval(...)) on a log scale;
    range(start, stop, step) -> int (or float) with that step, stop excluded as in Hydra.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    fixed: list[str] = []
    for line in overrides:
        try:
            override = OverridesParser.create().parse_override(line)
        except HydraException as err:
            raise ConfigError(f"search space {line!r} is not Hydra's override grammar ({first_line(err)}): "
                              "write e.g. 'optimizer.lr=tag(log, interval(1e-5, 1.0))'") from None
        if not override.is_sweep_override():
            fixed.append(line)
            continue
        key, value = override.get_key_element(), override.value()
        tags = set(getattr(value, "tags", ()))
        if tags - {"log"} or (tags and not isinstance(value, IntervalSweep | RangeSweep)):
            raise ConfigError(f"search space {line}: tag(log, ...) is the only tag, on interval() or range()")
        log_scale = "log" in tags
        if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
            choices = list(override.sweep_iterator(transformer=Transformer.encode))
            if not choices:
                raise ConfigError(f"search space {line} is empty: give at least one value")
            space[key] = CategoricalDistribution(choices)
        elif isinstance(value, RangeSweep):
            items = list(override.sweep_iterator(transformer=Transformer.encode))
            if not items:
                raise ConfigError(f"search space {line} is empty: range(start, stop, step) excludes stop; "
                                  "make stop lie beyond start in the step's direction")
            low, high, step = min(items), max(items), abs(value.step)
            if log_scale and (step != 1 or low <= 0):
                raise ConfigError(f"search space {line}: a log-scale range needs step 1 and start > 0")
            if all(isinstance(x, int) for x in (*items, value.step)):
                space[key] = IntDistribution(low, high, log=log_scale, step=1 if log_scale else step)
            else:
                space[key] = FloatDistribution(low, high, step=None if log_scale else step, log=log_scale)
        elif isinstance(value, IntervalSweep):
            low, high = float(value.start), float(value.end)
            if low > high:
                raise ConfigError(f"search space {line} is empty: {low:g} > {high:g}; give interval(low, high)")
            if log_scale and low <= 0:
                raise ConfigError(f"search space {line}: a log scale needs low > 0")
            space[key] = FloatDistribution(low, high, log=log_scale)
        else:
            raise ConfigError(f"search space {line}: {type(value).__name__.lower()}() is not a search space; "
                              "use choice(), range() or interval()")
    return space, fixed


SPACE = "search space: "  # the study's user attributes that say what it searches, one a parameter


def describe(distribution: Any) -> str:
    """A search dimension as optuna-dashboard shows it: 'log scale from 1e-05 to 1.0', 'one of mlp, convnet',
    '32 to 128 in steps of 32'."""
    if hasattr(distribution, "choices"):
        return "one of " + ", ".join(map(str, distribution.choices))
    scale = "log scale from " if distribution.log else "from "
    step = f" in steps of {distribution.step}" if distribution.step not in (None, 1) else ""
    kind = "whole numbers " if isinstance(distribution.low, int) else ""
    return f"{kind}{scale}{distribution.low} to {distribution.high}{step}"


def ends(distribution: Any) -> tuple[Any, Any]:
    """The two extreme values of a distribution (its first and last choice)."""
    if hasattr(distribution, "choices"):
        return distribution.choices[0], distribution.choices[-1]
    return distribution.low, distribution.high


def as_override(key: str, value: Any) -> str:
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


# The storage ------------------------------------------------------------------------------------

def storage_location(storage: str | None, sweep_dir: str) -> str:
    """An absolute journal path (default: <sweep dir>/optuna.journal), or an RDB URL as given."""
    if storage and "://" in str(storage):
        return str(storage)
    return os.path.abspath(storage or os.path.join(sweep_dir, JOURNAL))


def open_storage(location: str, mend: bool = False) -> Any:
    """Optuna storage for a journal file (checked to be one before anything is written to it) or an RDB URL.
    mend=True (the sweeper, before it opens the study): a torn last record is cut off first (mend_journal)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" in location:
        return optuna.storages.get_storage(location)
    path = Path(location)
    if path.is_dir():
        raise StudyError(f"hydra.sweeper.storage={path} is a folder: give a journal file, e.g. {path / JOURNAL}")
    if mend and path.is_file():
        mend_journal(path)
    if path.is_file() and path.stat().st_size:
        check_journal(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def mend_journal(path: Path) -> None:
    """Cut off a torn last record of the journal (a writer killed or out of disk mid-append), kept aside in
    optuna.journal.torn-<time>. Optuna reads past a torn last line but appends its next record onto it, and
    from then on no read succeeds. Done under Optuna's own journal lock: no record is being written."""
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))  # the lock JournalFileBackend takes to append
    lock.acquire()
    try:
        kept = cut_torn_tail(path)
    finally:
        lock.release()
    if kept is not None:
        log.warning(f"{path.name} ended in a torn record ({kept.stat().st_size} bytes, a write cut short): cut "
                    f"off and kept in {kept.name}; the study continues from its last whole record")


def check_journal(path: Path) -> None:
    """Raise StudyError unless every complete line of `path` is an Optuna journal record. (Optuna would
    append its own records to any file it fails to read.)"""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")[:-1]  # the last piece may be a record still being written
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            ok = isinstance(record, dict) and "op_code" in record
        except ValueError:
            ok = False
        if not ok:
            raise StudyError(f"{path} is not an Optuna study journal (line {n} is no journal record): give the "
                             f"{JOURNAL} of a study as hydra.sweeper.storage, or a new hydra.sweep.dir")
    if not lines:
        raise StudyError(f"{path} is not an Optuna study journal (no complete record): give the {JOURNAL} of a "
                         "study as hydra.sweeper.storage, or a new hydra.sweep.dir")


def build(spec: Any, **extra: Any) -> Any:
    """An Optuna sampler or pruner from its config ({_target_: ..., ...}); None for none."""
    if spec is None:
        return None

    spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else dict(spec)
    return instantiate({**spec, **extra})


# The trial's side (used by reporting.OptunaTrial, in the job) -------------------------------------

@dataclass
class TrialLink:
    """Where a trial lives: enough for its job to report to it and tell the study how it ended."""
    storage: str
    study_name: str
    number: int
    metric: str
    direction: str
    pruner: Any = None  # its config

    def connect(self) -> tuple[optuna.Study, optuna.Trial]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(self.storage)
        pruner = build(self.pruner) or optuna.pruners.NopPruner()
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner,
                                  sampler=optuna.samplers.RandomSampler())  # the job samples nothing
        study_id = storage.get_study_id_from_name(self.study_name)
        return study, optuna.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, self.number))


def current_trial() -> TrialLink | None:
    """The Optuna trial this run is (from its Hydra config: hydra.sweeper.trial), or None."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    sweeper = hydra.sweeper
    if sweeper.get("trial") is None:
        return None
    return TrialLink(storage=storage_location(sweeper.storage, hydra.sweep.dir), study_name=sweeper.study_name,
                     number=int(sweeper.trial), metric=sweeper.metric, direction=sweeper.direction,
                     pruner=sweeper.pruner)


def write_record(run_dir: Path, trial: optuna.trial.FrozenTrial, metric: str) -> None:
    """trial.yaml in the trial's run folder: what became of it."""
    steps = trial.intermediate_values
    record = {"trial": trial.number, "state": trial.state.name, "metric": metric, "value": trial.value,
              "epochs": max(steps) if steps else 0,  # epochs that reported a value
              "per_epoch": {int(k): float(v) for k, v in sorted(steps.items())}, "params": dict(trial.params)}
    if "error" in trial.user_attrs:
        record["error"] = trial.user_attrs["error"]
    record.update({k: v for k, v in trial.user_attrs.items() if k.startswith("test/")})
    if Path(run_dir).is_dir():
        write_text(RunDir(run_dir).trial, yaml.safe_dump(record, sort_keys=False))



def mend_record(trial: optuna.trial.FrozenTrial, metric: str) -> None:
    """trial.yaml for an ended trial whose job told the study, then was killed before writing it."""
    if "run" in trial.user_attrs and not RunDir(trial.user_attrs["run"]).trial.is_file():
        write_record(Path(trial.user_attrs["run"]), trial, metric)


# The sweeper's side ------------------------------------------------------------------------------

class StudySweep:
    """Runs a study: ask a batch of trials, launch them, settle each, until n_trials finished or pruned."""

    def __init__(self, metric: str, direction: str, n_trials: int, n_jobs: int, max_failures: int,
                 storage: str | None, study_name: str, sampler: Any, pruner: Any, params: Any = None,
                 trial: int | None = None):  # trial: set in each trial's job (current_trial), unused here
        for name, value, low in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1), ("max_failures", max_failures, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"hydra.sweeper.{name}={value} is invalid: use a whole number >= {low}")
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction={direction} is invalid: use maximize or minimize")
        self.metric, self.direction, self.study_name = metric, direction, study_name
        self.n_trials, self.n_jobs, self.max_failures = n_trials, n_jobs, max_failures
        self.storage, self.sampler, self.pruner = storage, sampler, pruner
        self.params = swept_params(params)
        self.stop_signal: int | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)
        self.sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # the study logs its own lines
        overrides = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        space, fixed = search_space(overrides)
        if not space:
            raise ConfigError("hydra/sweeper=optuna needs a search space: e.g. 'optimizer.lr=tag(log, interval("
                              "1e-5, 1.0))' or 'model=choice(mlp,convnet)' (or hydra.sweeper.params)")
        config.check_keys(overrides)  # as on the command line: "did you mean ...?"
        self.check_space(space, fixed)
        sweeps.name_by_what_varies(self.config, [fixed], None)  # the plain overrides: kept out of run names
        with self.owned():
            study = self.open_study(space)
            self.fail_left_running(study)
            previous = self.catch_signals()
            try:
                self.run(study, space, fixed)
            except Stopped as stop:  # a second signal, between trials (a trial says its own)
                raise Interrupted(f"{stop.name} received again: the study stopped at once with "
                                  f"{self.summary(study)}; run the same command with hydra.sweep.dir={self.sweep_dir} "
                                  "to continue it") from None
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def owned(self) -> Any:
        """The study's lock (runs.Lock, <journal>.study.lock) while this sweeper runs it: a second copy stops in
        one line instead of failing the first's running trials. An RDB storage has no file to lock beside it."""
        location = storage_location(self.storage, str(self.sweep_dir))
        if "://" in location:
            return contextlib.nullcontext()
        return owned(f"{location}.study.lock", "study", location, "run the same command again")

    def folder_name(self, number: int, params: dict[str, Any]) -> list[str]:
        """The override naming a trial's run folder by what the study searches: <trial>_<model>_<key>:<value>+...
        (hydra.sweep.subdir's form), sampled numbers to 3 significant digits (the trial number keeps names
        unique); none where the command line sets hydra.sweep.subdir."""
        if any(sweeps.override_key(o) == "hydra.sweep.subdir" for o in self.config.hydra.overrides.hydra):
            return []
        dirname = self.config.hydra.job.config.override_dirname
        items = sorted(f"{k}{dirname.kv_sep}{f'{v:.3g}' if isinstance(v, float) else v}"
                       for k, v in params.items() if k not in dirname.exclude_keys)
        model = params.get("model", "${model.name}")
        return [f"hydra.sweep.subdir='{number}_{model}_{dirname.item_sep.join(items)}'"]

    def check_space(self, space: dict[str, Any], fixed: list[str]) -> None:
        """Compose and validate a trial's config with every choice and both ends of every range (one at a time):
        an unknown key, an option that does not exist or a value mnist_lab refuses fails here, before any trial."""
        values = {key: getattr(d, "choices", ends(d)) for key, d in space.items()}
        firsts = {key: vs[0] for key, vs in values.items()}
        for key, value in [(None, None)] + [(k, v) for k, vs in values.items() for v in vs[1:]]:
            overrides = fixed + [as_override(k, value if k == key else v) for k, v in firsts.items()]
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            except Exception as err:  # Hydra's message, then OmegaConf's reason
                cause = f": {first_line(err.__cause__)}" if err.__cause__ else ""
                raise ConfigError(f"search space: {first_line(err)}{cause}") from None
            with open_dict(cfg):
                del cfg["hydra"]
            try:
                config.validate(cfg)
            except ConfigError as err:
                raise ConfigError(f"search space: {err}") from None

    def open_study(self, space: dict[str, Any]) -> optuna.Study:
        import optuna
        from optuna.distributions import json_to_distribution

        location = storage_location(self.storage, str(self.sweep_dir))
        self.opened = open_storage(location, mend=True)
        study = optuna.create_study(storage=self.opened, study_name=self.study_name,
                                    direction=self.direction, load_if_exists=True)
        spec = {"metric": self.metric, "direction": self.direction,
                **{f"{SPACE}{k}": describe(d) for k, d in space.items()}}
        attrs = study.user_attrs
        saved = {k: v for k, v in attrs.items() if k in ("metric", "direction") or k.startswith(SPACE)}
        if "search_space" in attrs:  # a study begun when the space was kept as JSON, in one attribute
            saved.update((f"{SPACE}{k}", describe(json_to_distribution(v))) for k, v in attrs["search_space"].items())
        if not saved:
            for k, v in spec.items():
                study.set_user_attr(k, v)
        elif saved != spec or study.direction.name.lower() != self.direction:
            keys = ", ".join(k[len(SPACE):] for k in saved if k.startswith(SPACE))
            raise StudyError(f"{location} holds study {self.study_name!r} of {saved.get('direction')} "
                             f"{saved.get('metric')} over {keys}, not this one: "
                             "run it with its own search space, or give a new hydra.sweep.dir")
        if study.metric_names is None:
            study.set_metric_names([self.metric])  # optuna-dashboard's name for the objective
        trials = study.get_trials(deepcopy=False)
        seed = {"seed": self.sampler["seed"] + len(trials)} if self.sampler and self.sampler.get("seed") is not None \
            else {}  # a continued study must not draw its first trials' parameters again
        study.sampler = build(self.sampler, **seed) or optuna.samplers.TPESampler()
        study.pruner = build(self.pruner) or optuna.pruners.NopPruner()
        self.location = location
        if trials:
            log.info(f"study {self.study_name!r} in {location}: {self.summary(study)}; continuing")
        else:
            log.info(f"study {self.study_name!r} in {location}: {self.n_trials} trials, {self.n_jobs} at a time")
        return study

    def fail_left_running(self, study: optuna.Study) -> None:
        """Trials that a stopped sweep left running: recorded as failed, never run again. A trial that ended
        but whose trial.yaml its killed job did not write gets it."""
        from optuna.trial import TrialState

        for frozen in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            mend_record(frozen, self.metric)
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            trial = self.trial(study, frozen.number)
            trial.set_user_attr("error", "the sweep stopped while this trial ran")
            frozen = study.tell(trial, state=TrialState.FAIL)
            if "run" in frozen.user_attrs:
                write_record(Path(frozen.user_attrs["run"]), frozen, self.metric)
            # no run takes its folder again: what its killed process left there goes (trials are <number>_...)
            folders = [Path(frozen.user_attrs["run"])] if "run" in frozen.user_attrs else \
                sorted(p for p in self.sweep_dir.glob(f"{frozen.number}_*") if p.is_dir())
            for folder in folders:
                runs.clear_abandoned(folder)
            log.warning(f"trial {frozen.number} was left running by a stopped sweep: recorded as failed")

    def run(self, study: optuna.Study, space: dict[str, Any], fixed: list[str]) -> None:
        from optuna.trial import TrialState

        failed = 0
        while True:
            done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            if done >= self.n_trials:
                break
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - done))]
            first = trials[0].number
            if [t.number for t in trials] != list(range(first, first + len(trials))):
                raise StudyError(f"another process is adding trials to study {self.study_name!r} in "
                                 f"{self.location}: run one sweep per study")
            overrides = [[*fixed, *(as_override(k, v) for k, v in t.params.items()), f"hydra.sweeper.trial={t.number}",
                          *self.folder_name(t.number, t.params)] for t in trials]
            try:
                returns: list[Any] = list(self.launcher.launch(overrides, initial_job_idx=first))
            except Exception as err:  # e.g. a Slurm job that died: the trials that told the study still count
                returns = [err] * len(trials)
            outcomes = [self.settle(study, t, ret) for t, ret in zip(trials, returns, strict=True)]
            failed += sum(o.state == TrialState.FAIL for o in outcomes)
            errors = [getattr(r, "_return_value", r) for r in returns]
            stop = self.stop_signal or next((e for e in errors if isinstance(e, Interrupted)), None)
            wrong = next((e for e in errors if isinstance(e, ObjectiveError)), None)
            if stop or wrong or failed >= self.max_failures:
                self.write_results(study)
                if stop:
                    name = signal.Signals(stop).name if isinstance(stop, int) else str(stop).split(" ", 1)[0]
                    raise Interrupted(f"{name} received: the study stopped with {self.summary(study)}; run the same "
                                      f"command with hydra.sweep.dir={self.sweep_dir} to continue it")
                if wrong:
                    raise ObjectiveError(str(wrong))
                raise StudyError(f"the study stopped: {failed} trials failed (hydra.sweeper.max_failures="
                                 f"{self.max_failures}); the last error: {outcomes[-1].user_attrs.get('error')}")
        self.write_results(study)

    def settle(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> optuna.trial.FrozenTrial:
        """The trial as its job left it; one the job did not finish is told failed, with the job's error."""
        from optuna.trial import TrialState

        frozen = study.get_trials(deepcopy=False)[trial.number]
        hydra_cfg = getattr(ret, "hydra_cfg", None)
        run_dir = Path(hydra_cfg.hydra.runtime.output_dir) if hydra_cfg is not None else None
        if not frozen.state.is_finished():
            if getattr(ret, "status", None) == JobStatus.FAILED:
                error = first_line(ret._return_value)
            elif isinstance(ret, BaseException):
                error = f"the launcher failed: {first_line(ret)}"
            else:
                error = f"the run ended without reporting {self.metric}"
            trial.set_user_attr("error", error)
            if run_dir is not None:
                trial.set_user_attr("run", str(run_dir))
            frozen = study.tell(trial, state=TrialState.FAIL)
            if run_dir is not None:
                write_record(run_dir, frozen, self.metric)
        else:
            mend_record(frozen, self.metric)
        params = " ".join(as_override(k, v) for k, v in frozen.params.items())
        if frozen.state == TrialState.COMPLETE:
            log.info(f"trial {frozen.number} finished: {self.metric}={frozen.value:.4f} ({params})")
        elif frozen.state == TrialState.PRUNED:
            log.info(f"trial {frozen.number} pruned after epoch {max(frozen.intermediate_values, default=0)}: "
                     f"{self.metric}={frozen.value if frozen.value is not None else float('nan'):.4f} ({params})")
        else:
            log.error(f"trial {frozen.number} failed: {frozen.user_attrs.get('error')} ({params})")
        return frozen

    def write_results(self, study: optuna.Study) -> None:
        """best.yaml and the plots, in the sweep folder."""
        from optuna.trial import TrialState

        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        result: dict[str, Any] = {"study": self.study_name, "storage": self.location, "metric": self.metric,
                                  "direction": self.direction, "trials": self.counts(study)}
        if complete:
            best = study.best_trial
            result["best"] = {"trial": best.number, "value": best.value, "params": dict(best.params),
                              "run": best.user_attrs.get("run"),
                              **{k: v for k, v in best.user_attrs.items() if k.startswith("test/")}}
            tests = "  ".join(f"{k}={v:.4f}" for k, v in best.user_attrs.items() if k.startswith("test/"))
            log.info(f"best trial {best.number}: {self.metric}={best.value:.4f} "
                     f"{' '.join(as_override(k, v) for k, v in best.params.items())}  {tests}  "
                     f"({best.user_attrs.get('run')})")
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.sweep_dir / "best.yaml", yaml.safe_dump(result, sort_keys=False))
        plot_study(study, self.sweep_dir, self.metric)
        log.info(f"study {self.summary(study)}: {self.sweep_dir / 'best.yaml'}")

    def counts(self, study: optuna.Study) -> dict[str, int]:
        from optuna.trial import TrialState

        states = [t.state for t in study.get_trials(deepcopy=False)]
        return {name: states.count(state) for name, state in (("finished", TrialState.COMPLETE),
                                                              ("pruned", TrialState.PRUNED),
                                                              ("failed", TrialState.FAIL))}

    def summary(self, study: optuna.Study) -> str:
        c = self.counts(study)
        return (f"{c['finished'] + c['pruned']} of {self.n_trials} trials done ({c['finished']} finished, "
                f"{c['pruned']} pruned), {c['failed']} failed")

    def trial(self, study: optuna.Study, number: int) -> optuna.Trial:
        import optuna

        study_id = self.opened.get_study_id_from_name(study.study_name)
        return optuna.trial.Trial(study, self.opened.get_trial_id_from_study_id_trial_number(study_id, number))

    def catch_signals(self) -> dict[int, Any]:
        """SIGINT or SIGTERM: stop when the running trials end (a second one: at once). A trial being trained
        in this process gets the signal itself (guards.GracefulInterrupt) and saves its checkpoint."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)
                    if signal.getsignal(sig) is not signal.SIG_IGN}  # ignored (a background job's SIGINT): kept so

        def stop(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            log.warning(f"{signal.Signals(signum).name} received: the study stops when its running trials end "
                        "(send it again to stop at once)")

        for sig in previous:
            signal.signal(sig, stop)
        return previous


def plot_study(study: optuna.Study, folder: Path, metric: str) -> None:
    """Optuna's matplotlib plots as PNGs; a plot the study cannot make yet (too few trials) is skipped, said in
    one line of ours: Optuna's own warnings ("[W ...] Your study does not have any completed trials.") are taken
    from its logger, not printed."""
    from optuna.trial import TrialState

    from mnist_lab import drawing

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        log.info("no plots yet: no trial finished or was pruned")
        return
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # "Using categorical units ..."
    said = OptunaLines()
    with warnings.catch_warnings(), said:
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        from optuna.visualization import matplotlib as optuna_plots

        for name in PLOTS:
            plot = getattr(optuna_plots, f"plot_{name}")
            said.lines.clear()
            try:
                if name == "intermediate_values":  # every trial's metric per epoch: where pruned ones stopped
                    axes = plot(study)
                    axes.set(xlabel="epoch", ylabel=metric)
                else:
                    axes = plot(study, target_name=metric)
            except Exception as err:  # e.g. importances need two finished trials
                log.info(f"no {name}.png yet: {first_line(err)}")
                continue
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            if said.lines:  # an empty plot, and Optuna's reason
                drawing.close(figure)
                log.info(f"no {name}.png yet: {said.lines[0]}")
                continue
            drawing.save(legible(figure), folder / f"{name}.png", tight=True)  # tight: Optuna's cut long names


def legible(fig: Any) -> Any:
    """Optuna's plot with whole numbers where only they make sense (trials, epochs: no 1.2, 1.4 ticks), and
    log-scale axes labelled at powers of ten, or within two decades at 1, 2 and 5 times them, as plain
    numbers (Optuna's labels every minor tick, and those overlap)."""
    from matplotlib.ticker import FuncFormatter, LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or ax.get_xlabel() in ("epoch", "Trial"):  # the trial number's colours
            (ax.yaxis if ax.get_label() == "<colorbar>" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))
        if ax.get_xscale() == "log":
            low, high = sorted(ax.get_xlim())
            decades = math.log10(high / low) if low > 0 else math.inf
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0,) if decades > 2 else (1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(LogFormatterSciNotation() if decades > 2
                                         else FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    width, height = fig.get_size_inches()
    fig.set_size_inches(max(width, 3.2 * len(panels) + 1), height)  # slice.png: a panel per parameter
    return fig


class OptunaLines(logging.Handler):
    """While in a `with` block, Optuna's log lines (its warnings) are kept in `lines` instead of printed."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> OptunaLines:
        import optuna

        optuna.logging.disable_default_handler()
        logging.getLogger("optuna").addHandler(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        import optuna

        logging.getLogger("optuna").removeHandler(self)
        optuna.logging.enable_default_handler()


def swept_params(params: Any) -> dict[str, str]:
    """hydra.sweeper.params as {dotted key: override value}: nested keys are joined with dots."""
    plain = OmegaConf.to_container(params, resolve=False) if OmegaConf.is_config(params) else params or {}
    return {k: str(v) for k, v in flatten(plain).items()}


def first_line(err: Any) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
