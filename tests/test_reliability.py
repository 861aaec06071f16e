"""Bad input, interruption, resume, determinism: each ends in one clear error or a correct recovery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mnist_lab import errors as runs_errors
from mnist_lab import runs
from mnist_lab.config import compose
from mnist_lab.errors import CheckpointError, ConfigError, DamagedFileError, Interrupted, TrainingError
from mnist_lab.module import LitClassifier, load_checkpoint
from mnist_lab.train import train
from tests.conftest import HOLD_LOCK, REPO, run_cli, tiny_overrides

# 2. Config: rejected before any data is read or output written --------------------------------

@pytest.mark.parametrize("override, key", [
    ("model.name=resnet", "model.name"),
    ("optimizer.name=adamw", "optimizer.name"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-1e-3", "optimizer.lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("data.val_size=600", "data.val_size"),  # the generated training set has 600 images
    ("data.val_size=-1", "data.val_size"),
    ("trainer.max_epochs=0", "trainer.max_epochs"),
])
def test_bad_values_rejected_before_anything(tiny_mnist, tmp_path, make_cfg, override, key):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=rf"^{key}=.* is invalid: ") as err:
        train(make_cfg(tiny_overrides(tiny_mnist, out) + [override]))
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_val_size_checked_against_real_size_without_loading(tmp_path, make_cfg):
    # no data at all: the check must not need it (MNIST's 60,000 is assumed)
    with pytest.raises(ConfigError, match="60,000 training images"):
        train(make_cfg([f"data.data_dir={tmp_path}", "data.val_size=60000", f"output_dir={tmp_path / 'r'}"]))


@pytest.mark.parametrize("override, expected", [
    ("optimizer.lrr=1", "unknown config key 'optimizer.lrr' in 'optimizer.lrr=1': did you mean optimizer.lr?"),
    ("trainer.max_epoch=3", "did you mean trainer.max_epochs?"),
    ("model=resnet", "model=resnet: no such option; choose one of convnet, mlp"),
])
def test_cli_typos_get_one_line_with_suggestion(tmp_path, override, expected):
    result = run_cli([override], cwd=tmp_path, quiet=True)
    assert result.returncode == 1
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_cli_bad_value_leaves_no_run_folder(tiny_mnist, tmp_path):
    result = run_cli([f"data.data_dir={tiny_mnist}", "optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'run'}"],
                     cwd=tmp_path, quiet=True)
    assert result.returncode == 1
    assert "optimizer.lr=-1.0 is invalid: the learning rate must be a number > 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


# 3. NaN or infinite loss ---------------------------------------------------------------------

def test_nonfinite_loss_stops_at_once_and_keeps_best(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    original = LitClassifier.training_step
    seen = []

    def diverging(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        seen.append(self.global_step)
        return loss * float("nan") if self.global_step >= 20 else loss  # epoch 2 has steps 16-31

    monkeypatch.setattr(LitClassifier, "training_step", diverging)
    monkeypatch.chdir(tmp_path)  # messages show paths relative to the working folder
    out = tmp_path / "run"
    # one step per training_step here; a chunk of steps (the fast path): tests/test_fastpath.py
    with pytest.raises(TrainingError, match=r"loss became non-finite \(nan\) at step 21 \(epoch 2\)") as err:
        train(make_cfg(tiny_overrides(tiny_mnist, out) + ["fast.enabled=false"]))
    assert max(seen) == 20  # stopped right after the first bad step
    assert str(err.value).endswith("Kept: run/checkpoints/best.ckpt (the best so far)")
    assert f"[ERROR] - {err.value}" in (out / "train.log").read_text()
    best = out / "checkpoints" / "best.ckpt"
    ckpt = load_checkpoint(best)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


# 4. Interruption and resume -----------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_and_resume_matches_uninterrupted(tiny_mnist, tmp_path, make_cfg, monkeypatch, sig,
                                                          ctrl_c):
    # one step per training_step; inside a chunk of steps (the fast path): tests/test_fastpath.py
    overrides = tiny_overrides(tiny_mnist, tmp_path / "whole") + ["trainer.max_epochs=3", "fast.enabled=false"]
    whole = train(make_cfg(overrides))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == 21:  # mid-epoch 1 (16 steps an epoch)
            os.kill(os.getpid(), sig)

    out = tmp_path / "interrupted"
    cut = [o if not o.startswith("output_dir=") else f"output_dir={out}" for o in overrides]
    with monkeypatch.context() as m:
        m.setattr(LitClassifier, "on_train_batch_end", on_train_batch_end, raising=False)
        with pytest.raises(Interrupted, match=rf"{sig.name} received: stopped after step 22 \(epoch 2\).*"
                                              rf"resume with: python -m mnist_lab.train resume=") as err:
            train(make_cfg(cut))
    assert f"[ERROR] - {err.value}" in (out / "train.log").read_text()
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 22  # the signal came after step 21; step 22 finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    resumed = train(make_cfg(cut + [f"resume={out}"]))
    for k in whole:
        assert resumed[k] == pytest.approx(whole[k], abs=1e-6), k
    assert [p for p in out.iterdir() if p.is_dir()] == [out / "checkpoints"]  # the same TensorBoard run
    assert len(list(out.glob("events.out.tfevents.*"))) > len(list((tmp_path / "whole").glob("events.*")))
    assert not list(out.glob("checkpoints/*-v1.ckpt"))


def test_a_signal_ignored_at_start_stays_ignored(tmp_path):
    # a shell starts a background job (`make test &`) with SIGINT ignored: a Ctrl-C meant for the foreground
    from types import SimpleNamespace

    from mnist_lab.guards import GracefulInterrupt
    from mnist_lab.study import StudySweep

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        guard = GracefulInterrupt(tmp_path)
        guard.on_train_start(SimpleNamespace(world_size=1), None)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == guard._handle  # SIGTERM is still caught
        guard.on_train_end(None, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        study = StudySweep("val/acc", "maximize", 1, 1, 1, None, "s", None, None)
        restore = study.catch_signals()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and list(restore) == [signal.SIGTERM]
        signal.signal(signal.SIGTERM, restore[signal.SIGTERM])
        with runs_errors.stopping() as release:  # outside the training loop: the same
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
            release()  # handed back early (a DDP run)
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_signal_that_finds_the_process_exiting_lets_the_exit_go_on():
    # submitit requeues a preempted Slurm job and exits (SystemExit); Slurm's SIGTERM follows at once, while the
    # exit unwinds through the run: a Stopped there would become the job's result, which the launcher then reads
    with pytest.raises(SystemExit) as exiting, runs_errors.stopping(lambda: "during training"):
        try:
            sys.exit(-1)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler runs here
    assert exiting.value.code == -1
    with pytest.raises(runs_errors.Stopped), runs_errors.stopping(lambda: "during training"):
        os.kill(os.getpid(), signal.SIGTERM)  # not exiting: the one line's Stopped
        time.sleep(0.05)


def test_a_signal_waits_for_writes_that_go_together():
    # a study's trial told complete and its trial.yaml: a SIGTERM between the two would leave one without the other
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("handled"))
    try:
        with runs_errors.deferred_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            seen.append("both written")
        time.sleep(0.05)
        assert seen == ["both written", "handled"]  # the signal came after, to the handler it would have found
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)


SIGNAL_AT = """
import os, runpy, signal, sys, time
from importlib import import_module
target, sig, module = sys.argv[1:4]
signal.signal(signal.SIGINT, signal.default_int_handler)  # a foreground command's, where pytest runs in the background
path, name = target.rsplit(".", 1)
try:
    owner = import_module(path)
except ModuleNotFoundError:  # a class's method
    owner = getattr(import_module(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1])
original = getattr(owner, name)
def signalled(*args, **kwargs):
    if not signalled.sent:
        signalled.sent = True
        if name == "shutdown":  # a drawing worker busy when the signal comes
            args[0].submit(time.sleep, 120)
        os.kill(os.getpid(), getattr(signal, sig))
    return original(*args, **kwargs)
signalled.sent = False
setattr(owner, name, signalled)
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""  # python -c SIGNAL_AT <module.function or module.Class.method> <SIGINT|SIGTERM> <module> <args>: the command
# `python -m <module> <args>`, which sends itself the signal once, as the function is first called


def signalled_at(target: str, sig: str, args: list[str], cwd: Path, module: str = "mnist_lab.train"):
    return subprocess.run([sys.executable, "-c", SIGNAL_AT, target, sig, module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def said_alone(result: subprocess.CompletedProcess) -> str:
    """The one line a stopped command printed on stderr (and no traceback anywhere)."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= 200, lines
    return lines[0]


@pytest.mark.parametrize("target, sig, expected", [
    ("mnist_lab.cmdline.prepare_argv", "SIGINT",
     "SIGINT received while starting: stopped before the run began, nothing written; run the command again"),
    ("mnist_lab.reporting.RunFigures.on_test_batch_end", "SIGTERM", "SIGTERM received during the test: stopped, "
     "checkpoints/last.ckpt kept; resume with: python -m mnist_lab.train resume=run"),
])
def test_a_signal_outside_the_training_loop_is_one_line(tiny_mnist, tmp_path, target, sig, expected):
    """As the command starts, during the test: one line saying what was kept and how to continue, exit status 1;
    resume= finishes a run stopped during its test; a signal while its figures are drawn again is one line too."""
    overrides = [*tiny_overrides(tiny_mnist, Path("run")), "trainer.max_epochs=1"]
    assert said_alone(signalled_at(target, sig, overrides, tmp_path)) == expected
    if "resume=" in expected:
        again = run_cli(["resume=run"], cwd=tmp_path, quiet=True)  # as the line says
        assert again.returncode == 0, again.stderr[-2000:]
        assert runs.finished(tmp_path / "run")
        redraw = signalled_at("mnist_lab.drawing.save", "SIGTERM", ["run"], tmp_path, module="mnist_lab.figures")
        assert said_alone(redraw) == ("SIGTERM received while the figures were drawn: stopped after those of 0 of 1 "
                                      "runs; the same command draws them again")


SIGNAL_ON_IMPORT = """
import os, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a foreground command's, where pytest runs in the background
sig = getattr(signal, sys.argv[1])
class Signalled:  # sends the signal as the command's libraries load: its first import of omegaconf
    def find_spec(self, name, path=None, target=None):
        if name == "omegaconf":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), sig)
        return None
sys.meta_path.insert(0, Signalled())
sys.argv = ["mnist_lab.train", *sys.argv[2:]]
runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_loads_is_one_line(tmp_path, sig):
    """Before the command's own checks, while its libraries import: the same line as at its checks, no traceback."""
    result = subprocess.run([sys.executable, "-c", SIGNAL_ON_IMPORT, sig, "trainer=cpu"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert said_alone(result) == (f"{sig} received while starting: stopped before the run began, nothing written; "
                                  "run the command again")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("target, sig, expected", [
    ("mnist_lab.provenance.collect", signal.SIGTERM,
     "SIGTERM received while starting: stopped before the first checkpoint: nothing to resume; run the command again"),
    ("mnist_lab.module.LitClassifier.validation_step", signal.SIGINT, "SIGINT received during the sanity check: "
     "stopped before the first checkpoint: nothing to resume; run the command again"),
])
def test_a_signal_before_the_first_checkpoint(tiny_mnist, tmp_path, make_cfg, monkeypatch, ctrl_c, target, sig,
                                             expected):
    path, name = target.rsplit(".", 1)
    owner = LitClassifier if path.endswith("LitClassifier") else __import__(path, fromlist=[name])
    original = getattr(owner, name)

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, signalled)
    with pytest.raises(Interrupted) as err:
        train(make_cfg(tiny_overrides(tiny_mnist, tmp_path) + ["trainer.max_epochs=1"]))
    assert str(err.value) == expected
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_sweep_stopped_outside_the_training_loop(tiny_mnist, tmp_path):
    """A job stopped during its test: the sweep's line and the job's agree (the sweep's command continues it), and
    sweep.log says interrupted. Then a signal while the sweep waits for its last figures ends the drawing workers at
    once (one line, no wait for the busy worker). (The next run draws what they had not: test_sweep.py.)"""
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    args = ["-m", "seed=0", "hydra.sweep.dir=sweep", *overrides, "trainer.max_epochs=1"]
    line = said_alone(signalled_at("mnist_lab.reporting.RunFigures.on_test_batch_end", "SIGINT", args, tmp_path))
    assert line == ("SIGINT received during the test: job 0 stopped, its last.ckpt saved; 0 of 1 jobs finished. "
                    "Continue the sweep with python -m mnist_lab.train -m resume=sweep")
    (logged,) = (tmp_path / "sweep" / "sweep.log").read_text().splitlines()
    assert re.fullmatch(r"\[.+\] job 0 \(seed=0 .+\) interrupted: SIGINT received during the test: stopped, "
                        r"checkpoints/last.ckpt kept; the sweep's command continues it", logged), logged

    started = time.monotonic()
    result = signalled_at("concurrent.futures.ProcessPoolExecutor.shutdown", "SIGTERM", args, tmp_path)
    assert time.monotonic() - started < 100  # the busy worker (120 s) was not waited for
    assert said_alone(result) == ("SIGTERM received while the last figures were drawn: stopped, every result kept; "
                                  "draw the rest with python -m mnist_lab.figures sweep")
    assert [re.search(r"\) (\w+): ", line)[1] for line in (tmp_path / "sweep" / "sweep.log").read_text().splitlines()
            ] == ["interrupted", "finished"]



def test_a_run_restarted_after_its_last_epoch_records_every_metric(tiny_mnist, tmp_path, make_cfg):
    # killed between its last epoch's checkpoint and its result.yaml (e.g. during the test): resume= tests it again
    out = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, out)
    train(make_cfg(overrides))
    whole = (out / "result.yaml").read_text()
    (out / "result.yaml").unlink()
    train(make_cfg(overrides + [f"resume={out}"]))
    metrics = runs.result_metrics(out)
    assert set(metrics) == {f"{s}/{m}" for s in ("train", "val", "test") for m in ("loss", "acc")}
    assert metrics == yaml.safe_load(whole)["metrics"]


@pytest.mark.parametrize("text, problem", [
    (None, "missing"),
    ("", "empty"),
    ("finished: '2026-12-07T04:26:26+00:00'\nmetrics:\n  test/acc: 0", "no train/loss, train/acc, test/loss, val/loss, "
                                                                       "val/acc"),
    ("metrics: {test/acc: [1,\n", "not valid YAML (line 2)"),
    ("finished", "no metrics"),
    ("metrics: {train/loss: 1, train/acc: 0.5, test/loss: 1, test/acc: 0.5}", "no val/loss, val/acc"),
    ("metrics: {train/loss: 1, train/acc: 0.5, test/loss: 1, test/acc: 0.5, val/loss: 1, val/acc: .5}", None),
])
def test_result_yaml_is_checked_where_it_is_read(tmp_path, monkeypatch, text, problem):
    monkeypatch.chdir(tmp_path.parent)
    (tmp_path / "config.yaml").write_text("data: {val_size: 100}\n")
    if text is not None:
        (tmp_path / "result.yaml").write_text(text)
    assert runs.result_problem(tmp_path) == problem
    assert runs.finished(tmp_path) == (problem is None)
    if problem is not None:
        with pytest.raises(DamagedFileError) as err:
            runs.result_metrics(tmp_path)
        assert str(err.value) == (f"{tmp_path.name}/result.yaml is not a finished run's record ({problem}): test "
                                  "the run again (python -m mnist_lab.train resume=<its folder>; a sweep's job: run "
                                  "the sweep again)")


def test_resume_of_a_folder_without_checkpoint(tmp_path, make_cfg, tiny_mnist):
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(CheckpointError, match="last.ckpt not found"):
        train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / "x") + [f"resume={tmp_path}"]))


# 5. and 8. Checkpoints: damaged, foreign, other model; never unpickled -----------------------

@pytest.fixture(scope="module")
def trained(tiny_mnist, tmp_path_factory):

    out = tmp_path_factory.mktemp("trained")
    cfg = compose(tiny_overrides(tiny_mnist, out) + ["trainer.max_epochs=1"])
    train(cfg)
    return out / "checkpoints" / "best.ckpt"


def test_truncated_checkpoint(trained, tmp_path):
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(trained.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut.ckpt is truncated, damaged or not a checkpoint at all: use "
                                              r"another one") as err:
        load_checkpoint(bad)
    assert err.value.__cause__ is not None  # torch's own words: for the log, not the line


@pytest.mark.parametrize("seed", range(20))
def test_corrupted_checkpoint(trained, tmp_path, seed):
    import random

    blob = bytearray(trained.read_bytes())
    blob[: 64] = random.Random(seed).randbytes(64)  # damaged bytes fail in many different ways
    bad = tmp_path / "noise.ckpt"
    bad.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="noise.ckpt is truncated, damaged or not a checkpoint"):
        load_checkpoint(bad)


def test_foreign_checkpoint(tmp_path):
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="weights.pt is not an mnist_lab checkpoint"):
        load_checkpoint(plain)


def test_checkpoint_of_another_model(trained):
    with pytest.raises(CheckpointError, match="holds a mlp, not a convnet: use model=mlp"):
        LitClassifier.from_checkpoint(str(trained), model_name="convnet")
    assert LitClassifier.from_checkpoint(str(trained), model_name="mlp").net.image.in_features == 784


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["MNIST_LAB_PWNED"]),))


def test_checkpoint_with_code_is_never_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("MNIST_LAB_PWNED", str(marker))
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"name": "mlp"}}, "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match=r"holds Python objects that could run code when unpickled \([\w.]+\); "
                                              r"it was not loaded") as err:
        load_checkpoint(evil)
    assert "safe_globals" not in str(err.value)  # torch's advice would switch the check off
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    for path in (REPO / "src").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{n} loads without weights_only=True"


# 6. Determinism ------------------------------------------------------------------------------

def test_same_seed_same_metrics_other_seed_differs(tiny_mnist, tmp_path, make_cfg):
    def run(name, seed):
        return train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / name) + [f"seed={seed}",
                                                                              "trainer.max_epochs=1"]))

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    assert a == b
    assert a["test/loss"] != c["test/loss"]


# 7. Sweeps -----------------------------------------------------------------------------------

def test_sweep_with_a_failing_job_finishes_the_others(tiny_mnist, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "optimizer.lr=-1,1e-3", "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}",
                      *overrides], cwd=tmp_path, timeout=300, quiet=True)
    assert result.returncode == 1
    log = result.stdout + result.stderr
    assert "job 0 (optimizer.lr=-1" in log and "optimizer.lr=-1.0 is invalid" in log
    done = [p for p in sweep.iterdir() if p.is_dir() and (p / "checkpoints" / "best.ckpt").is_file()]
    assert len(done) == 1 and done[0].name.startswith("1_") and "optimizer.lr:0.001" in done[0].name
    # the sweep folder's log: how each job ended, the failure in its one line
    lines = (sweep / "sweep.log").read_text().splitlines()
    failed = next(line.split("] ", 1)[1] for line in lines if "job 0 " in line)
    assert failed.startswith("job 0 (optimizer.lr=-1") and ") failed: optimizer.lr=-1.0 is invalid: " in failed
    assert len(failed) <= 200, failed
    assert any(re.search(r"job 1 \(optimizer.lr=0.001\) finished: test/acc \d\.\d{4}, in ", line) for line in lines)


def test_runs_started_together_get_their_own_folders(tiny_mnist, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    args = [sys.executable, "-m", "mnist_lab.train", "trainer.fast_dev_run=true", *overrides]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = sorted((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "config.yaml").is_file() for r in runs)


def test_ddp_relaunch_under_multirun_is_refused(tiny_mnist, tmp_path):
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    result = run_cli(["-m", "trainer=ddp_cpu", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides],
                     cwd=tmp_path, timeout=300, quiet=True)
    assert result.returncode == 1
    assert "trainer.strategy=ddp under --multirun would re-run the whole sweep in every rank" in result.stderr
    assert not (tmp_path / "sweep").exists()  # refused before the sweep folder is made


# One owner at a time: a run folder, a sweep folder, a study ------------------------------------------------------

def test_a_run_in_use_is_refused_and_freed_when_its_holder_dies(tiny_mnist, tmp_path, make_cfg, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_mnist, run)
    train(make_cfg(overrides))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, run / runs.LOCK], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(runs_errors.LockedError) as err:
            train(make_cfg(overrides + [f"resume={run}"]))
        assert re.fullmatch(rf"run run is in use by pid {holder.pid} on \S+ \(since [\d: -]+\): let that one finish, "
                            r"or stop it and resume it \(resume=<that folder>, or its sweep again\)", str(err.value))
        assert len(str(err.value)) <= 200 and (run / "config.yaml").is_file()  # nothing of the run removed
    finally:
        holder.kill()
        holder.wait()
    train(make_cfg(overrides + [f"resume={run}"]))  # the holder died: its lock is stale
    assert f"took over the lock of run run from pid {holder.pid} on " in caplog.text
    assert f"(pid {holder.pid} is gone)" in caplog.text
    assert not (run / runs.LOCK).exists()  # released at the end


def test_a_lock_from_another_host_frees_itself_without_heartbeat(tmp_path, monkeypatch, caplog):
    lock = tmp_path / runs.LOCK
    theirs = {"host": "node-elsewhere", "pid": 1, "started": "1", "since": "2026-12-07 04:00:00"}
    lock.write_text(json.dumps(theirs))
    with pytest.raises(runs_errors.LockedError, match=r"^sweep \S+ is in use by pid 1 on node-elsewhere \(since "):
        with runs.owned(lock, "sweep", tmp_path, "it again"):
            pass
    old = time.time() - runs.STALE_S - 5
    os.utime(lock, (old, old))
    with runs.owned(lock, "sweep", tmp_path, "it again"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "from pid 1 on node-elsewhere (no heartbeat for 12" in caplog.text
    assert not lock.exists()

    lock.write_text(json.dumps({**theirs, "slurm_job": "42", "slurm_restart": 0}))  # fresh, but of this Slurm job
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with pytest.raises(runs_errors.LockedError):  # a second step of the same job start: not requeued
        with runs.owned(lock, "run", tmp_path, "it again"):
            pass
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with runs.owned(lock, "run", tmp_path, "it again"):
        pass
    assert "(Slurm job 42 was requeued)" in caplog.text


def test_two_processes_taking_one_lock_at_once(tmp_path):
    lock = tmp_path / runs.LOCK
    lock.write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": "1", "since": "then"}))
    old = time.time() - runs.STALE_S - 5
    os.utime(lock, (old, old))  # stale: both try to take it over
    take = ("import sys, time\nfrom mnist_lab.runs import Lock, Held\ntime.sleep(float(sys.argv[2]) - time.time())\n"
            "try:\n    Lock(sys.argv[1], 'run').acquire(); print('took', flush=True); time.sleep(1)\n"
            "except Held:\n    print('held', flush=True)\n")
    at = str(time.time() + 3)
    procs = [subprocess.Popen([sys.executable, "-c", take, str(lock), at], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    said = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert said == ["held", "held", "held", "took"]


# Damaged bookkeeping files: one line naming the file and what to do ---------------------------------------------

@pytest.fixture
def finished_copy(trained, tmp_path, monkeypatch):
    """A copy of a finished run (config, provenance, test_outputs.npz, event files, result.yaml), as `run`."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained.parent.parent, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("damage, problem", [("", "empty"), ("model: {name: mlp\n", "not valid YAML (line 2)"),
                                             ("model: mlp\n", "model or data is not a group of keys")])
def test_a_damaged_config_in_compare_reproduce_figures(finished_copy, capsys, damage, problem):
    from mnist_lab import compare, figures, reproduce

    (finished_copy / ".hydra").mkdir()
    (finished_copy / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (finished_copy / "config.yaml").write_text(damage)
    said = (f"run/config.yaml is damaged ({problem}): restore it from .hydra/config.yaml there (the config the run "
            "started with), or move the run aside")
    for command, code in ((compare.main, 1), (reproduce.main, 2), (figures.main, 1)):
        assert command([str(finished_copy)]) == code, command
        assert capsys.readouterr().err.strip() == said, command
    assert not list(finished_copy.parent.glob("outputs"))  # reproduce trained nothing


def test_damaged_provenance_overrides_npz_and_event_file(finished_copy, capsys, caplog):
    from mnist_lab import compare, figures, provenance, reproduce

    (finished_copy / "provenance.yaml").write_text("host: [\n")
    assert reproduce.main([str(finished_copy)]) == 2
    assert capsys.readouterr().err.strip() == ("run/provenance.yaml is damaged (not valid YAML (line 2)): restore it, "
                                               "or move it aside (reproduce then takes the current code)")
    provenance.write(runs.RunDir(finished_copy), {"git": {}}, "")  # a resumed run: its own record in its place
    assert yaml.safe_load((finished_copy / "provenance.yaml").read_text()) == {"git": {}}
    assert re.search(r"run/provenance.yaml is damaged \(not valid YAML \(line 2\)\): kept as provenance.yaml.damaged-"
                     r"\w+; this start's record is written in its place", caplog.text)

    (finished_copy / ".hydra").mkdir()
    (finished_copy / ".hydra" / "overrides.yaml").write_text("seed=1\n")
    assert compare.main([str(finished_copy)]) == 1
    assert capsys.readouterr().err.strip() == ("run/.hydra/overrides.yaml is damaged (no list: a str): restore it, or "
                                               "move the run aside")
    (finished_copy / ".hydra" / "overrides.yaml").unlink()

    events = sorted(finished_copy.glob("events.out.tfevents.*"))[-1]
    events.write_bytes(events.read_bytes()[:-7])  # the last record cut short
    assert compare.main([str(finished_copy)]) == 0
    assert capsys.readouterr().err.strip() == (f"run/{events.name} is damaged (has truncated record in data): the "
                                               "run's values logged after that are missing here; a run still writing "
                                               "it: compare again when it ends")

    npz = finished_copy / "test_outputs.npz"
    npz.write_bytes(npz.read_bytes()[:300])
    assert figures.main([str(finished_copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"run/test_outputs.npz is damaged \(.+\): remove it and the run's result.yaml, then run the "
                        r"run \(or its sweep\) again: it is tested again from its checkpoint", err), err
    assert "pickle" not in err


def test_a_damaged_multirun_yaml_is_one_line(tmp_path, monkeypatch):
    from mnist_lab.cmdline import prepare_argv

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "multirun.yaml").write_text("hydra: {overrides: [\n")
    with pytest.raises(runs_errors.DamagedFileError) as err:
        prepare_argv(["train", "-m", "resume=s"])
    assert str(err.value) == ("s/multirun.yaml is damaged (not valid YAML (line 2)): restore it (Hydra wrote it when "
                              "the sweep began), or give a new hydra.sweep.dir")
    (tmp_path / "s" / "multirun.yaml").write_text("")
    with pytest.raises(runs_errors.DamagedFileError, match=r"^s/multirun.yaml is damaged \(empty\)"):
        runs.saved_overrides(tmp_path / "s")


def test_a_lock_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    lock = tmp_path / runs.LOCK
    with runs.owned(lock, "run", tmp_path, "it again"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert [p.name for p in tmp_path.iterdir()] == [runs.LOCK]  # no temporary file left
    assert not lock.exists()
