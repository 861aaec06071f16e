"""Optuna studies (hydra/sweeper=optuna): the search space in Hydra's grammar, pruning inside the run, a study
stopped by SIGTERM and continued, and the one-line errors. Two trials at a time on Slurm: test_slurm.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from mnist_lab import compare, study
from mnist_lab.config import check_keys, compose
from mnist_lab.errors import ConfigError, ObjectiveError
from mnist_lab.runs import RunDir
from mnist_lab.train import train
from tests.conftest import HOLD_LOCK, run_cli, tiny_overrides

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_study(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_cli(["-m", "hydra/sweeper=optuna", *args], cwd=cwd, timeout=600, quiet=True)


def sweep_overrides(data: Path, out: Path) -> list[str]:
    return [o for o in tiny_overrides(data, out) if not o.startswith("output_dir=")]


def load(journal: Path) -> optuna.Study:
    return optuna.load_study(study_name="mnist_lab", storage=study.open_storage(str(journal)))


def epochs_logged(run: Path) -> int:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return len(events.Scalars("val/acc"))


# The search space ---------------------------------------------------------------------------------

def test_search_space_described_as_text():
    assert study.describe(FloatDistribution(1e-5, 1.0, log=True)) == "log scale from 1e-05 to 1.0"
    assert study.describe(IntDistribution(32, 128, step=32)) == "whole numbers from 32 to 128 in steps of 32"
    assert study.describe(CategoricalDistribution(["mlp", "convnet"])) == "one of mlp, convnet"


def test_search_space_in_hydras_grammar():
    space, fixed = study.search_space(["optimizer.lr=tag(log, interval(1e-5, 1.0))", "model=choice(mlp,convnet)",
                                       "data.batch_size=range(32,129,32)", "seed=0,1", "trainer.max_epochs=2"])
    assert space == {"optimizer.lr": FloatDistribution(1e-5, 1.0, log=True),
                     "model": CategoricalDistribution(["mlp", "convnet"]),
                     "data.batch_size": IntDistribution(32, 128, step=32),  # Hydra's range excludes its stop
                     "seed": CategoricalDistribution([0, 1])}
    assert fixed == ["trainer.max_epochs=2"]


@pytest.mark.parametrize("override, message", [
    ("optimizer.lr=interval(1.0, 1e-5)", "search space optimizer.lr=interval(1.0, 1e-5) is empty: 1 > 1e-05"),
    ("data.batch_size=range(64,32)", "search space data.batch_size=range(64,32) is empty"),
    ("optimizer.lr=tag(log, interval(0, 1))", "search space optimizer.lr=tag(log, interval(0, 1)): a log scale "
                                              "needs low > 0"),
    ("model=glob(*)", "search space model=glob(*): glob() is not a search space"),
])
def test_search_space_errors_are_one_line(override, message):
    with pytest.raises(ConfigError) as err:
        study.search_space([override])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_command_line_check_takes_the_sweepers_grammar():
    check_keys(["model=choice(mlp,convnet)", "optimizer.lr=tag(log, interval(1e-5, 1.0))", "model=mlp,convnet",
                "data.batch_size=range(32,256,32)", "hydra/sweeper=optuna"])
    with pytest.raises(ConfigError, match=r"^model=resnet: no such option; choose one of convnet, mlp$"):
        check_keys(["model=choice(mlp,resnet)"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr' .*: did you mean optimizer.lr\?$"):
        check_keys(["optimizer.lrr=tag(log, interval(1e-5, 1.0))"])


def test_hydra_finds_the_sweeper():
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    assert "OptunaSweeper" in {c.__name__ for c in Plugins.instance().discover(Sweeper)}
    cfg = compose(["hydra/sweeper=optuna"], hydra=True)
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.mnist_lab_optuna.optuna_sweeper.OptunaSweeper"
    assert (cfg.hydra.sweeper.metric, cfg.hydra.sweeper.direction) == ("val/acc", "maximize")


# The trial's side, in-process ---------------------------------------------------------------------

def trial_of_a_study(tmp_path: Path, metric: str = "val/acc") -> tuple[optuna.Study, study.TrialLink]:
    """A study whose one finished trial reached 1.0 after every epoch, and a new trial of it."""
    journal = tmp_path / "optuna.journal"
    s = optuna.create_study(storage=study.open_storage(str(journal)), study_name="mnist_lab", direction="maximize")
    s.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={1: 1.0, 2: 1.0, 3: 1.0}))
    number = s.ask().number
    pruner = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1}
    return s, study.TrialLink(str(journal), "mnist_lab", number, metric, "maximize", pruner)


def test_pruned_trial_stops_early_untested_and_its_folder_says_so(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    s, link = trial_of_a_study(tmp_path)
    monkeypatch.setattr(study, "current_trial", lambda: link)
    run = tmp_path / "run"
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 1 of 3"):
        train(make_cfg(tiny_overrides(tiny_mnist, run) + ["trainer.max_epochs=3", "optimizer.lr=1e-7"]))
    trial = load(tmp_path / "optuna.journal").trials[link.number]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    assert trial.user_attrs["run"] == str(run)
    record = yaml.safe_load(RunDir(run).trial.read_text())
    assert (record["state"], record["epochs"], record["trial"]) == ("PRUNED", 1, link.number)
    assert epochs_logged(run) == 1 and (run / "history.png").is_file()
    assert not (run / "confusion_matrix.png").exists()  # not tested


def test_metric_the_run_never_logs(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    _, link = trial_of_a_study(tmp_path, metric="val/accuracy")
    monkeypatch.setattr(study, "current_trial", lambda: link)
    with pytest.raises(ObjectiveError) as err:  # at the sanity check, before any training
        train(make_cfg(tiny_overrides(tiny_mnist, tmp_path / "run")))
    assert str(err.value) == ("hydra.sweeper.metric=val/accuracy: the run never logs it after validation; "
                              "choose one of val/acc, val/loss")


# A study on the command line ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def stopped_and_continued(tiny_mnist, tmp_path_factory):
    """A 5-trial study over three learning rates: 3e-3 learns, 1e-7 does not (pruned once a trial finished), 1e30
    makes the loss NaN (failed). TPE's seed 8 draws 3e-3, 1e-7, 1e30, 3e-3 first (its first 10 trials are random
    draws, whatever their outcome). SIGTERM once 3 trials are finished or pruned; then the same command again."""
    root = tmp_path_factory.mktemp("study")
    sweep = root / "sweep"
    args = [f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler.seed=8",
            "hydra.sweeper.pruner.n_startup_trials=1", "optimizer.lr=choice(1e-7,3e-3,1e30)",
            *sweep_overrides(tiny_mnist, root), "trainer.max_epochs=2"]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "hydra/sweeper=optuna", *args]
    first = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 600
        journal = sweep / study.JOURNAL

        def ended() -> int:  # trials finished or pruned: the journal's records of those states, read cheaply
            text = journal.read_bytes() if journal.is_file() else b""
            return text.count(b'"state":1') + text.count(b'"state":2')

        while ended() < 3 and time.time() < deadline and first.poll() is None:
            time.sleep(0.02)  # often: the two trials left take about a second each
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=600)
        done = load(journal).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    finally:
        first.kill()
    before = {p.name: {f.name: f.stat().st_mtime_ns for f in p.iterdir() if f.is_file()}
              for p in sweep.iterdir() if p.is_dir()}
    second = run_study(args, cwd=root)
    return sweep, first.returncode, err, [t.number for t in done], before, second


def test_sigterm_stops_the_study_and_the_same_command_continues_it(stopped_and_continued):
    sweep, code, err, done_first, before, second = stopped_and_continued
    assert code == 1 and "SIGTERM received: the study stopped with " in err, err[-2000:]
    assert f"run the same command with hydra.sweep.dir={sweep} to continue it" in err
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    trials = load(sweep / study.JOURNAL).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 5  # exactly n_trials
    assert TrialState.RUNNING not in states
    runs = sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: int(p.name.split("_")[0]))
    assert [int(p.name.split("_")[0]) for p in runs] == [t.number for t in trials]  # one folder per trial number
    # named by the searched value, to 3 significant digits; the plain overrides (trainer.max_epochs=2) left out
    assert [p.name for p in runs] == [f"{t.number}_mlp_optimizer.lr:{t.params['optimizer.lr']:.3g}" for t in trials]
    for number in done_first:  # the trials done before SIGTERM ran once: their folders are as they were
        run = runs[number]
        assert before[run.name] == {f.name: f.stat().st_mtime_ns for f in run.iterdir() if f.is_file()}
    continued = re.search(r"(\d) of 5 trials done .*; continuing", second.stdout)
    assert continued and int(continued[1]) >= len(done_first) >= 3, second.stdout[-3000:]


def test_pruned_trials_ran_fewer_epochs(stopped_and_continued):
    sweep = stopped_and_continued[0]
    trials = load(sweep / study.JOURNAL).trials
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and finished
    for t in pruned + finished:
        run = Path(t.user_attrs["run"])
        record = yaml.safe_load(RunDir(run).trial.read_text())
        assert record["state"] == t.state.name
        assert RunDir(run).result.is_file() == (t.state == TrialState.COMPLETE)  # told complete once recorded
        assert epochs_logged(run) == (1 if t.state == TrialState.PRUNED else 2), run.name


def test_failed_trials_are_recorded_with_their_error(stopped_and_continued):
    sweep = stopped_and_continued[0]
    failed = [t for t in load(sweep / study.JOURNAL).trials if t.state == TrialState.FAIL]
    nan = [t for t in failed if t.params["optimizer.lr"] == 1e30]
    assert nan and all(t.user_attrs["error"].startswith("loss became non-finite") for t in nan)
    record = yaml.safe_load(RunDir(nan[0].user_attrs["run"]).trial.read_text())
    assert record["state"] == "FAIL" and record["error"].startswith("loss became non-finite")


def test_best_yaml_plots_tensorboard_and_compare(stopped_and_continued, capsys):
    sweep = stopped_and_continued[0]
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    s = load(sweep / study.JOURNAL)
    assert best["best"]["trial"] == s.best_trial.number and best["best"]["value"] == s.best_value
    assert s.metric_names == ["val/acc"]  # optuna-dashboard names the objective by it
    assert s.user_attrs["search space: optimizer.lr"] == "one of 1e-07, 0.003, 1e+30"  # plain text, a parameter each
    assert best["best"]["params"] == {"optimizer.lr": 3e-3} and 0 <= best["best"]["test/acc"] <= 1
    assert Path(best["best"]["run"]).is_dir()
    for name in study.PLOTS:
        assert (sweep / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    events = EventAccumulator(best["best"]["run"])  # every trial is a TensorBoard run with its hyperparameters
    events.Reload()
    hparams = events.PluginTagToContent("hparams")
    assert b"optimizer.lr" in hparams["_hparams_/session_start_info"]
    experiment = metadata.parse_experiment_plugin_data(hparams[metadata.EXPERIMENT_TAG])
    assert {h.name for h in experiment.hparam_infos if h.differs} == {"model.name", "optimizer.lr"}  # searched first
    assert compare.main([str(sweep)]) == 0
    assert "| mlp " in capsys.readouterr().out


# One line for what cannot work --------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["optimizer.lr=interval(1.0, 1e-5)"], "search space optimizer.lr=interval(1.0, 1e-5) is empty: 1 > 1e-05; "
                                           "give interval(low, high)"),
    (['hydra.sweeper.params={optimizer.lrr:"choice(1e-3,1e-2)"}'],
     "unknown config key 'optimizer.lrr' in 'optimizer.lrr=choice(1e-3,1e-2)': did you mean optimizer.lr?"),
    (["optimizer.lr=choice(1e-3,0,1e-2)"],
     "search space: optimizer.lr=0.0 is invalid: the learning rate must be a number > 0 (the default is 1e-3)"),
    (["optimizer.lr=choice(1e-3,1e-2)", "hydra.sweeper.storage=not_a_study.txt"],
     "not_a_study.txt is not an Optuna study journal (line 1 is no journal record): give the optuna.journal of a "
     "study as hydra.sweeper.storage, or a new hydra.sweep.dir"),
])
def test_errors_before_any_trial(tiny_mnist, tmp_path, args, message):
    (tmp_path / "not_a_study.txt").write_text("a list of things\n")
    result = run_study([f"hydra.sweep.dir={tmp_path / 'sweep'}", *sweep_overrides(tiny_mnist, tmp_path), *args],
                     cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[0].endswith(message), result.stderr[-2000:]
    assert (tmp_path / "not_a_study.txt").read_text() == "a list of things\n"  # nothing appended
    assert not list((tmp_path / "sweep").glob("0_*"))



def test_a_folder_holding_another_study_is_refused(stopped_and_continued, tiny_mnist, tmp_path):
    sweep = stopped_and_continued[0]
    trials = len(load(sweep / study.JOURNAL).trials)
    result = run_study([f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=6", "optimizer.lr=choice(1e-3,1e-1)",
                      *sweep_overrides(tiny_mnist, tmp_path)], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"{sweep / study.JOURNAL} holds study 'mnist_lab' of maximize val/acc over optimizer.lr, not this one: run "
        "it with its own search space, or give a new hydra.sweep.dir")
    assert len(load(sweep / study.JOURNAL).trials) == trials


def test_plots_say_in_one_line_of_ours_what_optuna_would_warn(tmp_path, capfd, caplog):
    s = optuna.create_study(direction="maximize")
    s.tell(s.ask({"optimizer.lr": FloatDistribution(1e-5, 1.0, log=True)}), state=TrialState.FAIL)
    with caplog.at_level("INFO", logger="mnist_lab"):
        study.plot_study(s, tmp_path, "val/acc")  # no trial finished
        assert "[W " not in capfd.readouterr().err and not list(tmp_path.iterdir())
        assert "no plots yet: no trial finished or was pruned" in caplog.text
        s.tell(s.ask({"optimizer.lr": FloatDistribution(1e-5, 1.0, log=True)}), 0.9)  # one finished: some plots
        study.plot_study(s, tmp_path, "val/acc")
    assert "[W " not in capfd.readouterr().err
    assert (tmp_path / "optimization_history.png").is_file()
    assert "no intermediate_values.png yet: " in caplog.text  # Optuna's reason, as our line
    assert not (tmp_path / "intermediate_values.png").exists()


def test_a_torn_journal_tail_is_cut_off_and_the_study_goes_on(tiny_mnist, tmp_path):
    # a crash or a full disk in the middle of an append: the record of trial 2's end is half written
    sweep = tmp_path / "sweep"
    args = [f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=3", "optimizer.lr=choice(1e-3,3e-3)",
            *sweep_overrides(tiny_mnist, tmp_path), "trainer.max_epochs=1"]
    assert run_study(args, cwd=tmp_path).returncode == 0
    journal = sweep / study.JOURNAL
    whole = journal.read_bytes()
    last = whole[:-1].rsplit(b"\n", 1)[1] + b"\n"
    assert b'"state":1' in last  # trial 2 finished: its last record
    torn = whole[len(whole) - len(last):len(whole) - len(last) // 2]
    journal.write_bytes(whole[:len(whole) - len(last) // 2])

    again = run_study(args, cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    kept = list(sweep.glob(f"{study.JOURNAL}.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn
    said = [line for line in (again.stdout + again.stderr).splitlines() if "torn record" in line]
    assert len(said) == 1 and said[0].endswith(f"{study.JOURNAL} ended in a torn record ({len(torn)} bytes, "
                                               f"a write cut short): cut off and kept in {kept[0].name}; the "
                                               "study continues from its last whole record"), said
    states = [t.state for t in load(journal).trials]  # every line reads
    assert states == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.COMPLETE]  # exactly n_trials done


def test_a_study_in_use_is_refused(tiny_mnist, tmp_path):
    # a second copy of the study: it would fail the first's running trials and run trials beyond n_trials
    sweep = tmp_path / "sweep"
    lock = f"{sweep / study.JOURNAL}.study.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, lock], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = run_study([f"hydra.sweep.dir={sweep}", "optimizer.lr=choice(1e-3,3e-3)",
                          *sweep_overrides(tiny_mnist, tmp_path)], cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert re.fullmatch(rf"study sweep/{study.JOURNAL} is in use by pid {holder.pid} on \S+ \(since [\d: -]+\): let "
                        r"that one finish, or stop it and run the same command again", result.stderr.splitlines()[0])
    assert not (sweep / study.JOURNAL).exists()
