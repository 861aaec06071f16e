"""The run's loggers (the `logger` config group): built in one place, written to and read back here.

    build_loggers(chosen, run)   the Lightning loggers that cfg.logger selects, writing into the run folder
    HParams                      the run's config as hyperparameters to every logger (TensorBoard's HPARAMS:
                                 the keys that tell a sweep's runs apart first)
    log_figure(...)              a matplotlib figure to every logger that keeps images
    read_scalars(run_dir, ...)   a run's logged scalars per tag, whichever logger wrote them

TensorBoard and CSV write into the run folder; MLflow into a local store (runs.MLRUNS: SQLite and the
artifacts) in the sweep folder under -m, else in the run folder, or to logger.mlflow.tracking_uri.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from mnist_lab.config import NOT_HPARAMS, among, chosen_loggers, flatten, override_key
from mnist_lab.runs import MLRUNS, RunDir, atomic_path, in_sweep, saved_overrides, write_bytes

METRICS_CSV = ExperimentWriter.NAME_METRICS_FILE  # metrics.csv


def build_loggers(chosen: Mapping, run: RunDir) -> list:
    """The loggers that `chosen` (cfg.logger) turns on: {tensorboard: {}, csv: {}, mlflow: {...}}, None = off."""
    loggers = []
    if chosen.get("tensorboard") is not None:
        loggers.append(RunTensorBoardLogger(run.path, name="", version="", default_hp_metric=False))
    if chosen.get("csv") is not None:
        loggers.append(RunCSVLogger(run.path, name="", version=""))
    if chosen.get("mlflow") is not None:
        loggers.append(mlflow_logger(chosen["mlflow"], run))
    return loggers


class RunTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoardLogger without the `epoch` scalar Lightning adds to every logging call: in
    TensorBoard it is a chart of its own, first in the Scalars tab, plotting the epoch against the step. Its
    writer thread's failures (a full disk) print no traceback: the writer raises them again in the run's own
    thread, at its next write, where the run says them in one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if threading.excepthook is not _quiet_writer_thread:
            _quiet_writer_thread.previous = threading.excepthook
            threading.excepthook = _quiet_writer_thread

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def _quiet_writer_thread(args) -> None:
    """threading.excepthook: TensorBoard's event writer thread's OSError goes unprinted (RunTensorBoardLogger)."""
    if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
        _quiet_writer_thread.previous(args)


_quiet_writer_thread.previous = threading.excepthook


class RunMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger without the `epoch` metric (a chart of its own in MLflow's UI), and with each
    value as the shortest decimal of the float32 it was computed in (0.9332, not 0.9332000017166138)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({k: v if isinstance(v, str) else float(str(np.float32(v)))
                             for k, v in metrics.items() if k != "epoch"}, step)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it takes a run folder that already holds files, a resumed run
    appends to its metrics.csv (Lightning's writer would warn, then delete the file), and both files are
    written whole under a temporary name and renamed (runs.atomic_path): an append or a rewrite cut short
    by a full disk would leave half a file."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])  # the header: new keys widen it, old ones stay

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        rows = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(rows + self.metrics)
        self.metrics = []

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        with atomic_path(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE)) as tmp:
            save_hparams_to_yaml(tmp, self.hparams)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing metrics.csv and hparams.yaml straight into the run folder."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def mlflow_store(run: RunDir) -> Path:
    """A run's local MLflow store: the mlruns/ that already holds it (run folder, then sweep folder); for a
    new run, the sweep folder's under -m (one store, so MLflow's UI compares the sweep), else the run's."""
    for folder in (run.path, run.path.parent):
        if (folder / MLRUNS / "mlflow.db").is_file():
            return folder / MLRUNS
    return (run.path.parent if in_sweep() else run.path) / MLRUNS


def mlflow_client(settings: Mapping, run: RunDir) -> tuple[Any, str, str | None]:
    """(MlflowClient, tracking URI, artifact location) for a run: logger.mlflow.tracking_uri, or the local
    store (SQLite, artifacts beside it). A new local store is made here, quietly (MLflow announces its
    tables on the console), with its artifacts in the store: MLflow's own default would put the "Default"
    experiment's in the working directory."""
    from mlflow import MlflowClient  # an optional extra: pip install -e '.[mlflow]'
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    if settings.get("tracking_uri"):
        return MlflowClient(settings["tracking_uri"]), settings["tracking_uri"], None
    store = mlflow_store(RunDir(run.path.resolve()))
    store.mkdir(parents=True, exist_ok=True)
    uri, artifacts = f"sqlite:///{store / 'mlflow.db'}", (store / "artifacts").as_uri()
    if not (store / "mlflow.db").is_file():
        quiet = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(logging.WARNING)
        try:
            SqlAlchemyStore(uri, artifacts)  # its tables and its first experiment, artifacts in the store
        finally:
            for q, level in zip(quiet, levels, strict=True):
                q.setLevel(level)
    return MlflowClient(uri), uri, artifacts


EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3's UI: runs, not GenAI traces
SQLITE_DEFAULT_EXPERIMENT = "0"  # the id of the experiment MLflow makes with every store


def mlflow_experiment(client, name: str, artifacts: str | None) -> Any:
    """The MLflow experiment `name`, typed as model training, so that MLflow's UI opens on its runs. In a new
    local store it is the store's first experiment ("Default", which MLflow makes with every store), renamed:
    the store then holds no empty experiment beside it."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None and artifacts is not None:
        default = client.get_experiment(SQLITE_DEFAULT_EXPERIMENT)
        if default.name == "Default" and not client.search_runs([default.experiment_id], max_results=1):
            client.rename_experiment(default.experiment_id, name)
        experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=artifacts)
        except MlflowException:  # another job of the sweep created it first
            pass
        experiment = client.get_experiment_by_name(name)
    if experiment.tags.get(EXPERIMENT_KIND[0]) is None:
        client.set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
    return experiment



def mlflow_run_id(client, experiment_id: str, name: str) -> str | None:
    """The id of the MLflow run named `name` (a run folder's name) in the experiment, if there is one."""
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for found in page:
            if found.info.run_name == name:
                return found.info.run_id
        token = page.token
        if not token:
            return None


def mlflow_logger(settings: Mapping, run: RunDir) -> MLFlowLogger:
    """Lightning's MLFlowLogger on the run's MLflow run: a new one named after the run folder, or the one
    it already has (resume=, a requeued job)."""
    client, uri, artifacts = mlflow_client(settings, run)
    name = settings.get("experiment_name", "mnist_lab")
    experiment = mlflow_experiment(client, name, artifacts)
    run_id = mlflow_run_id(client, experiment.experiment_id, run.path.name)
    return RunMLFlowLogger(experiment_name=name, run_name=run.path.name, tracking_uri=uri, run_id=run_id)


class HParams(L.Callback):
    """The run's resolved config, flattened, as every logger's hyperparameters (logged when a run starts,
    not again when it resumes).

    TensorBoard's HPARAMS tab gets them through its own summary API (Lightning's passes booleans as
    numbers, and registers the metric columns by logging placeholder values at step 0): the keys that
    tell runs apart first (tensorboard_hparams), booleans and strings as such, and as metric columns
    the run's own val/ and test/ scalars (their last values); whole numbers as text, to read as typed.

    A fit that starts again where an earlier one of the run logged (resume=, a sweep's job again, after a full
    disk or a kill) writes TensorBoard's mark of a restart (SessionLog.START) at the step it starts from: its
    readers then drop what the earlier try logged from that step on, so no step is there twice."""

    def on_fit_start(self, trainer, module) -> None:
        config = module.hparams.get("config")
        self.restarted = trainer.ckpt_path is not None
        if not self.restarted and trainer.is_global_zero:  # again from the start, where others logged
            mark_restart(trainer, 0, earlier_only=True)
        if not config or trainer.ckpt_path is not None:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.hparams.update(tensorboard_hparams(config, [])[0])  # its hparams.yaml, as the CSV logger's
                if trainer.is_global_zero:  # the other ranks' experiment is a stand-in that writes nothing
                    write_tensorboard_hparams(logger, config, swept_keys(config))
            else:  # CSV (hparams.yaml), MLflow (params): what TensorBoard's HPARAMS shows
                logger.log_hyperparams(tensorboard_hparams(config, swept_keys(config))[0])

    def on_train_start(self, trainer, module) -> None:
        if self.restarted and trainer.is_global_zero:  # the checkpoint's step is restored by now
            mark_restart(trainer, trainer.global_step)

    def on_test_start(self, trainer, module) -> None:
        if getattr(self, "restarted", False) and trainer.is_global_zero:  # its test again (restarted after fit)
            mark_restart(trainer, trainer.global_step)


def mark_restart(trainer, step: int, earlier_only: bool = False) -> None:
    """SessionLog.START at `step` in the run's TensorBoard events (earlier_only: only where the folder holds an
    earlier process's event files), after cutting off the torn last record of an earlier one (cut_torn_events)."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        writer = logger.experiment._get_file_writer()
        mine = Path(getattr(writer.event_writer, "_file_name", "")).name  # this fit's own file
        earlier = [p for p in Path(logger.log_dir).glob("events.out.tfevents.*") if p.name != mine and p.is_file()]
        if earlier_only and not earlier:
            continue
        for path in earlier:
            cut_torn_events(path)
        writer.add_event(Event(step=step, wall_time=time.time(), session_log=SessionLog(status=SessionLog.START)))
        writer.flush()


def cut_torn_events(path: Path) -> Path | None:
    """Cut off the end of an earlier process's event file that is no whole record (a write cut short by a full disk
    or a kill), keeping it beside it as events.out.torn.<...>-<UTC time>, so that readers (compare) find it whole;
    returns that file, or None where the file ends whole. TensorBoard's record reader tells where records end."""
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    reader, whole = pywrap_tensorflow.PyRecordReader_New(str(path)), 0
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return None
        except errors.DataLossError as err:
            if "truncated record" not in err.message:  # damaged inside, not cut short: left for compare to say
                return None
            break
        whole += 16 + len(reader.record())  # length (8), its crc (4), the record, its crc (4)
    # named without "tfevents": TensorBoard reads every file so named
    kept = path.with_name(f"{path.name.replace('tfevents', 'torn')}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    with open(path, "rb+") as f:
        f.seek(whole)
        write_bytes(kept, f.read())
        f.truncate(whole)
    logging.getLogger("mnist_lab").info(f"{path.name} ended in a torn record: cut off, kept as {kept.name}")
    return kept


HPARAM_METRICS = ("val/acc", "val/loss", "test/acc", "test/loss")  # HPARAMS' metric columns, in this order


def swept_keys(config: Mapping) -> list[str]:
    """The config keys a sweep varies (model=mlp,convnet -> model.name), in the sweep's order, read from the
    sweep folder's record of its command line; a job without one (a study's): the keys its own overrides
    set, less those left out of run folders' names. None outside a sweep. What tells the runs apart, so
    TensorBoard shows them first."""
    if not in_sweep():
        return []
    hydra_cfg = HydraConfig.get()
    saved = saved_overrides(Path(hydra_cfg.sweep.dir))
    if saved is not None:
        parsed = OverridesParser.create().parse_overrides(saved[0])
        names = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
    else:  # less the keys every job has the same (a study's plain overrides), which leave run names too
        left_out = set(hydra_cfg.job.config.override_dirname.exclude_keys)
        names = [override_key(o) for o in hydra_cfg.overrides.task if override_key(o) not in left_out]
    flat = flatten(config)
    keys = []
    for key in names:
        key = key if key in flat else f"{key}.name"  # a config group: its choice's name
        if key in flat and not among(key, NOT_HPARAMS) and key not in keys:
            keys.append(key)
    return keys


def tensorboard_hparams(config: Mapping, swept: list[str]) -> tuple[dict[str, Any], set[str]]:
    """(hyperparameters in display order, the keys to show first): the swept keys and the model, then the
    rest of the config in its order; config.NOT_HPARAMS and unset options (null: the library's default) left out."""
    flat = {k: v for k, v in flatten(config).items() if not among(k, NOT_HPARAMS) and v is not None}
    first = [k for k in [*swept, "model.name"] if k in flat]
    ordered = {k: flat[k] for k in first}
    ordered.update((k, v) for k, v in flat.items() if k not in ordered)
    return ordered, set(first)


def write_tensorboard_hparams(logger: TensorBoardLogger, config: Mapping, swept: list[str]) -> None:
    """The HPARAMS tab's records for this run, built from TensorBoard's hparams protos (its summary helpers
    need TensorFlow). TensorBoard sorts the columns by `differs`, then by name: the swept keys and the
    model are marked, so they come first."""
    params, first = tensorboard_hparams(config, swept)
    # whole numbers as text: the protos have no integer type and the tab prints every number to 5 significant
    # digits (seed 0 as 0.0000, batch size 128 as 128.00); as text they read as typed (sorted as text)
    params = {k: str(v) if type(v) is int else v for k, v in params.items()}
    kinds = {bool: "DATA_TYPE_BOOL", float: "DATA_TYPE_FLOAT64", str: "DATA_TYPE_STRING"}
    infos = [api_pb2.HParamInfo(name=k, type=api_pb2.DataType.Value(kinds[type(v)]), differs=k in first)
             for k, v in params.items()]
    validates = (config.get("data") or {}).get("val_size", 1) > 0
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in HPARAM_METRICS
               if validates or not tag.startswith("val/")]
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for k, v in params.items():
        field = {bool: "bool_value", str: "string_value"}.get(type(v), "number_value")  # bool before int
        setattr(start.hparams[k], field, v)
    writer = logger.experiment._get_file_writer()
    for tag, data in ((metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(
                           experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics))),
                      (metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start))):
        writer.add_summary(Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data))]))
    writer.flush()


def log_figure(loggers: list, tag: str, figure, step: int) -> None:
    """Draw `figure` into every logger that keeps images: TensorBoard (Images tab, at `step`) and MLflow
    (the artifact <tag>.png); the CSV logger has no place for it."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(tag, figure, step, close=False)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_figure(logger.run_id, figure, f"{tag}.png")


def log_to_run(run: RunDir, config: Mapping | None, figures: Mapping[str, Any], step: int) -> None:
    """Add figures ({tag: figure}) to a finished run's loggers (TensorBoard: a new event file in its folder)."""
    loggers = build_loggers(chosen_loggers(config), run)
    for tag, figure in figures.items():
        log_figure(loggers, tag, figure, step)
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.finalize("success")


def read_scalars(run_dir: str | Path, tags: tuple[str, ...] | None = None,
                 chosen: Mapping | None = None) -> dict[str, list[float]]:
    """A run's logged values per tag, in step order, one per step (a resumed run may log a step twice: the
    later value counts). Read with each logger's own reader, from the first the run has: TensorBoard's
    EventAccumulator, metrics.csv (Python's csv), MLflow's client (`chosen`: the run's logger config)."""
    run = RunDir(run_dir)
    if any(run.path.glob("events.out.tfevents.*")):
        by_step = _tensorboard_scalars(run.path, tags)
    elif (run.path / METRICS_CSV).is_file():
        by_step = _csv_scalars(run.path / METRICS_CSV, tags)
    else:
        settings = (chosen or {}).get("mlflow") or {}
        local = any((folder / MLRUNS / "mlflow.db").is_file() for folder in (run.path, run.path.parent))
        by_step = _mlflow_scalars(run, tags, settings) if local or settings.get("tracking_uri") else {}
    return {tag: [values[s] for s in sorted(values)] for tag, values in by_step.items()}


def _tensorboard_scalars(path: Path, tags) -> dict[str, dict[int, float]]:
    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # "No path found after ..." is expected
    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    found = events.Tags()["scalars"]
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in found if tags is None or tag in tags}


def _csv_scalars(path: Path, tags) -> dict[str, dict[int, float]]:
    series: dict[str, dict[int, float]] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for tag, value in row.items():
                if tag not in ("step", "epoch") and value not in ("", None) and (tags is None or tag in tags):
                    series.setdefault(tag, {})[int(row["step"])] = float(value)
    return series


def _mlflow_scalars(run: RunDir, tags, settings: Mapping) -> dict[str, dict[int, float]]:
    client, _, _ = mlflow_client(settings, run)
    experiment = client.get_experiment_by_name(settings.get("experiment_name", "mnist_lab"))
    run_id = experiment and mlflow_run_id(client, experiment.experiment_id, run.path.name)
    if not run_id:
        return {}
    names = client.get_run(run_id).data.metrics
    return {tag: {m.step: m.value for m in client.get_metric_history(run_id, tag)}
            for tag in names if tags is None or tag in tags}
