"""What a browser gets from TensorBoard, MLflow's server and optuna-dashboard on a real sweep and a real study
(generated data): each started on 127.0.0.1 at a free port, asked over its HTTP API, then stopped.

Runs only with MNIST_LAB_SERVERS=1 (CI sets it); the servers come with the `[ui]` extra (make test installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.servers
BIN = Path(sys.executable).parent  # the environment's console scripts: tensorboard, mlflow, optuna-dashboard
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
START_S = 180  # the most a server may take to answer (MLflow's takes 10-40 s on a busy 2-core machine)
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to 127.0.0.1, never a proxy


@pytest.fixture(scope="module", autouse=True)
def servers_on():
    if os.environ.get("MNIST_LAB_SERVERS") != "1":
        pytest.skip("set MNIST_LAB_SERVERS=1 to run the server tests (TensorBoard, MLflow, optuna-dashboard)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(url: str, body: dict | None = None) -> dict | list:
    """The JSON a server answers to GET `url` (POST `body` as JSON, where given)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with LOCAL.open(request, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serving(cmd: list[str], port: int, ready: str, cwd: Path) -> Iterator[str]:
    """Run a server (in a process group of its own) until GET <ready> answers 200; yield its base URL; stop it
    (SIGTERM to the group, SIGKILL after 10 s)."""
    log = cwd / f"server_{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, f"{cmd[0]} exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"{cmd[0]} did not answer in {START_S} s: {log.read_text()[-2000:]}"
            with contextlib.suppress(OSError):
                with LOCAL.open(base + ready, timeout=5) as response:
                    if response.status == 200:
                        break
            time.sleep(0.5)
        yield base
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


def run_sweep(args: list[str], root: Path, data: Path) -> None:
    overrides = [o for o in tiny_overrides(data, root) if not o.startswith("output_dir=")]
    result = subprocess.run([sys.executable, "-m", "mnist_lab.train", "-m", *args, *overrides, "trainer.max_epochs=1"],
                            cwd=root, capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory) -> Path:
    """2 MLP runs (seed=0,1) logged to TensorBoard and MLflow, with a constant (trainer.max_epochs=1)."""
    root = tmp_path_factory.mktemp("served_sweep")
    run_sweep(["seed=0,1", "logger=[tensorboard,mlflow]", f"hydra.sweep.dir={root / 'sweep'}"], root, tiny_mnist)
    return root / "sweep"


def test_tensorboard_shows_the_runs_by_name_curves_and_hparams(sweep):
    port = free_port()
    cmd = [str(BIN / "tensorboard"), "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port)]
    with serving(cmd, port, "/data/runs", sweep.parent) as tb:
        assert ask(tb + "/data/runs") == ["0_mlp_seed:0", "1_mlp_seed:1"]  # named by what varies
        tags = ask(tb + "/data/plugin/scalars/tags")
        for run in ("0_mlp_seed:0", "1_mlp_seed:1"):
            assert {"train/loss", "train/acc", "train/epoch_s", "val/acc", "test/acc"} <= set(tags[run])
            assert {tag.split("/")[0] for tag in tags[run]} == {"train", "val", "test"}  # no group above the curves
        experiment = ask(tb + "/data/plugin/hparams/experiment", {"experimentName": ""})
        infos = experiment["hparamInfos"]  # the HPARAMS table's columns, in the order it shows them
        assert [i["name"] for i in infos[:2]] == ["model.name", "seed"] and not infos[2]["differs"]
        assert not {"output_dir", "data.data_dir", "threads"} & {i["name"] for i in infos}
        groups = ask(tb + "/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 10,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [{"hparam": "seed"}, {"metric": {"tag": "test/acc"}}]})["sessionGroups"]
        assert sorted(g["hparams"]["seed"] for g in groups) == ["0", "1"]  # whole numbers, not 0.0000
        assert all(g["hparams"]["data.batch_size"] == "32" for g in groups)


def test_mlflow_server_lists_the_runs_with_params_and_metrics(sweep):
    try:
        server = metadata.version("mlflow")
    except metadata.PackageNotFoundError:
        pytest.skip("MLflow's server is not installed: pip install -e '.[ui]'")
    assert server == metadata.version("mlflow-skinny")  # the UI reads what the client wrote
    port = free_port()
    store = f"sqlite:///{sweep / 'mlruns' / 'mlflow.db'}"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with serving(cmd, port, "/health", sweep.parent) as mlflow:
        api = mlflow + "/api/2.0/mlflow"
        experiments = ask(api + "/experiments/search?max_results=10")["experiments"]
        assert [e["name"] for e in experiments] == ["mnist_lab"]  # no empty "Default" beside it
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiments[0]["tags"]
        found = ask(api + "/runs/search", {"experiment_ids": [experiments[0]["experiment_id"]]})["runs"]
        assert sorted(r["info"]["run_name"] for r in found) == ["0_mlp_seed:0", "1_mlp_seed:1"]
        for r in found:
            params = {p["key"]: p["value"] for p in r["data"]["params"]}
            metrics = {m["key"]: m["value"] for m in r["data"]["metrics"]}
            assert params["seed"] == r["info"]["run_name"][-1] and params["optimizer.lr"] == "0.001"
            assert not {"output_dir", "data.data_dir", "threads"} & set(params) and "None" not in params.values()
            assert {"val/acc", "test/acc", "train/epoch_s"} <= set(metrics) and "epoch" not in metrics
            assert 0 <= metrics["test/acc"] <= 1
    assert not (sweep.parent / "mlruns").exists() and not (sweep.parent / "mlartifacts").exists()


def test_optuna_dashboard_shows_the_metric_and_the_search_space(tiny_mnist, tmp_path):
    run_sweep(["hydra/sweeper=optuna", f"hydra.sweep.dir={tmp_path / 'study'}", "hydra.sweeper.n_trials=2",
               "optimizer.lr=choice(1e-3,3e-3)"], tmp_path, tiny_mnist)
    port = free_port()
    cmd = [str(BIN / "optuna-dashboard"), str(tmp_path / "study" / "optuna.journal"), "--host", "127.0.0.1",
           "--port", str(port)]
    with serving(cmd, port, "/api/studies", tmp_path) as dashboard:
        studies = ask(dashboard + "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["mnist_lab"]
        study = ask(dashboard + f"/api/studies/{studies[0]['study_id']}?after=0")
        assert study["objective_names"] == ["val/acc"]  # not "Objective 0"
        attrs = {a["key"]: a["value"] for a in study["user_attrs"]}
        assert attrs["search space: optimizer.lr"] == "one of 0.001, 0.003"  # text, not escaped JSON
        assert len(study["trials"]) == 2
