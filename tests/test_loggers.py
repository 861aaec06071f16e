"""The logger group: logger=csv and logger=mlflow on a sweep, read back with each library's own reader
(Python's csv, MLflow's client); several loggers at once, resumed; compare from the run folders."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mnist_lab import compare, runs
from mnist_lab.runs import MLRUNS
from tests.conftest import tiny_overrides

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason="MLflow is not installed: pip install -e '.[mlflow]' "
                                                          "(make test's dev extra has it)")


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mlflow_runs(store):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist_lab")
    return client, {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory):
    """4 runs: logger=csv for seeds 0 and 1, logger=mlflow for seeds 0 and 1 (where MLflow is installed);
    1 epoch each."""
    root = tmp_path_factory.mktemp("logger_sweep")
    overrides = [o for o in tiny_overrides(tiny_mnist, root) if not o.startswith("output_dir=")]
    loggers = "logger=csv,mlflow" if HAVE_MLFLOW else "logger=csv"
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", loggers, "seed=0,1", f"hydra.sweep.dir={root / 'sweep'}",
           *overrides, "trainer.max_epochs=1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "console.txt").write_text(result.stdout + result.stderr)
    return root / "sweep"


def runs_of(sweep, logger: str) -> list:
    import yaml

    return [r for r in runs.find_runs(sweep)
            if yaml.safe_load((r / "config.yaml").read_text())["logger"][logger] is not None]


def test_csv_runs_hold_their_metrics(sweep):
    runs = runs_of(sweep, "csv")
    assert len(runs) == 2
    for run in runs:
        assert not list(run.glob("events.out.tfevents.*")) and not (run / MLRUNS).exists()
        table = rows(run / "metrics.csv")
        val = [float(r["val/acc"]) for r in table if r["val/acc"]]
        test = [float(r["test/acc"]) for r in table if r["test/acc"]]
        assert len(val) == 1 and len(test) == 1 and 0 <= test[0] <= 1
        assert len([r for r in table if r["train/loss"]]) == 1 and len([r for r in table if r["train/epoch_s"]]) == 1
        assert "optimizer.lr" in (run / "hparams.yaml").read_text()


@needs_mlflow
def test_mlflow_runs_hold_params_and_metrics(sweep):
    runs = runs_of(sweep, "mlflow")
    assert len(runs) == 2 and (sweep / MLRUNS / "mlflow.db").is_file()  # one store for the sweep
    client, found = mlflow_runs(sweep / MLRUNS)
    assert set(found) == {r.name for r in runs}  # an MLflow run per run folder, named after it
    for run in runs:
        assert not list(run.glob("events.out.tfevents.*")) and not (run / "metrics.csv").exists()
        record = found[run.name]
        assert record.info.status == "FINISHED"
        assert record.data.params["seed"] == run.name.split("seed:")[1][0]
        assert float(record.data.params["optimizer.lr"]) == 1e-3 and record.data.params["model.name"] == "mlp"
        assert len(client.get_metric_history(record.info.run_id, "val/acc")) == 1
        assert {"test/acc", "test/loss", "val/loss", "train/acc", "train/epoch_s"} <= set(record.data.metrics)
        assert 0 <= record.data.metrics["test/acc"] <= 1
        assert "epoch" not in record.data.metrics  # no chart of the epoch against the step
        assert all(v == float(str(np.float32(v))) for v in record.data.metrics.values())  # 0.9332, not 0.93320000171
        params = record.data.params  # the hyperparameters, as in TensorBoard's HPARAMS
        assert not {"output_dir", "data.data_dir", "threads", "resume"} & set(params) and "None" not in params.values()
        assert not any(k.startswith("logger.") for k in params)
        figures = {a.path for a in client.list_artifacts(record.info.run_id, "test")}
        assert figures == {"test/predictions.png", "test/confusion_matrix.png"}
        assert (run / "history.png").is_file()  # drawn from what MLflow holds
    experiments = client.search_experiments()  # no empty "Default" beside it; typed for the runs view
    assert [e.name for e in experiments] == ["mnist_lab"]
    assert experiments[0].tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiments[0].artifact_location.startswith((sweep / MLRUNS).as_uri())
    assert not (sweep.parent / "mlruns").exists()  # nothing in the working directory
    assert "Creating initial MLflow database tables" not in (sweep.parent / "console.txt").read_text()


def test_compare_reads_csv_and_mlflow_runs(sweep, capsys):
    assert compare.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| mlp"))
    assert "| 2 |" in row and row.count("±") == 3, out  # logger is not part of a variant: seeds 0 and 1
    if HAVE_MLFLOW:  # each seed ran with csv and with mlflow: counted once, and said
        assert "- mlp: seeds 0, 1 in 4 runs" in out


@needs_mlflow
def test_several_loggers_and_resume(tiny_mnist, tmp_path, make_cfg, monkeypatch, ctrl_c):
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    from mnist_lab.errors import Interrupted
    from mnist_lab.module import LitClassifier
    from mnist_lab.train import train

    out = tmp_path / "run"
    # the fast path takes clipping and the batch limit out of Lightning's hands, not out of the run's record
    overrides = tiny_overrides(tiny_mnist, out) + ["logger=[tensorboard,csv,mlflow]", "fast.steps=4",
                                                   "trainer.gradient_clip_val=100.0", "trainer.limit_train_batches=1.0"]

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step > 16 and not hasattr(self, "signalled"):  # mid-epoch 1 of 2 (16 steps an epoch)
            self.signalled = True
            os.kill(os.getpid(), signal.SIGINT)

    with monkeypatch.context() as m:
        m.setattr(LitClassifier, "on_train_batch_end", on_train_batch_end, raising=False)
        with pytest.raises(Interrupted):
            train(make_cfg(overrides))
    assert len([r for r in rows(out / "metrics.csv") if r["val/acc"]]) == 1
    metrics = train(make_cfg(overrides + [f"resume={out}"]))

    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    steps = [e.step for e in events.Scalars("val/acc")]
    assert len(steps) == 2 and "test/acc" in events.Tags()["scalars"]
    table = rows(out / "metrics.csv")  # the first epoch's row survived the resume
    assert [int(r["step"]) for r in table if r["val/acc"]] == steps
    assert float(next(r["test/acc"] for r in table if r["test/acc"])) == pytest.approx(metrics["test/acc"])
    client, found = mlflow_runs(out / MLRUNS)  # a single run keeps its store in its own folder
    assert list(found) == ["run"]  # the resumed run continued the same MLflow run
    record = found["run"]
    assert [m.step for m in client.get_metric_history(record.info.run_id, "val/acc")] == steps
    assert record.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert record.info.status == "FINISHED" and record.data.params["seed"] == "0"  # params of the start

    kept = {"trainer.gradient_clip_val": 100.0, "trainer.limit_train_batches": 1.0}
    saved = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]
    assert {k: saved["config"]["trainer"][k.split(".")[1]] for k in kept} == kept
    assert saved["fast"]["steps"] == 4  # the plan, as plain values
    start = metadata.parse_session_start_info_plugin_data(
        events.PluginTagToContent("hparams")[metadata.SESSION_START_INFO_TAG]).hparams
    assert {k: start[k].number_value for k in kept} == kept  # TensorBoard's HPARAMS
    assert {k: float(record.data.params[k]) for k in kept} == kept  # MLflow's params


def test_mlflow_missing_is_one_clear_error(make_cfg, tmp_path, monkeypatch):
    from mnist_lab.config import validate
    from mnist_lab.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger=mlflow needs MLflow, which is not installed: pip install"):
        validate(make_cfg(["logger=mlflow", f"output_dir={tmp_path}"]))
    validate(make_cfg(["logger=[tensorboard,csv]", f"output_dir={tmp_path}"]))
