"""stack=N under -m: how a sweep's jobs are grouped into stacks, and a stacked sweep on generated data whose jobs
are each a Hydra job of their own (folder, number, .hydra/ files, sweep.log line), skipped once finished."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from hydra.core.utils import JobReturn, JobStatus

from mnist_lab import config, runs, stacking
from tests.conftest import tiny_overrides

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def planned(jobs: list[list[str]], tmp_path: Path, caplog) -> tuple[list[list[int]], list[str]]:
    """stacking.plan over jobs numbered 0, 1, ...: the stacks' job numbers, and the lines it logged."""
    numbered = [(n, o) for n, o in enumerate(jobs)]
    configs = {n: config.compose(o, hydra=True) for n, o in numbered}
    with caplog.at_level(logging.INFO, logger="mnist_lab.stacking"):
        caplog.clear()
        stacks = stacking.plan(configs, numbered, {n: tmp_path / str(n) for n, _ in numbered})
    return [[n for n, _ in s] for s in stacks or []], [r.getMessage() for r in caplog.records]


def grid(*axes: list[str]) -> list[list[str]]:
    jobs: list[list[str]] = [[]]
    for axis in axes:
        jobs = [job + [o] for job in jobs for o in axis]
    return jobs


def test_seeds_and_learning_rates_stack_up_to_n(tmp_path, caplog):
    jobs = grid(["seed=0", "seed=1", "seed=2"], ["optimizer.lr=0.001", "optimizer.lr=0.003"], ["stack=4"])
    stacks, lines = planned(jobs, tmp_path, caplog)
    assert stacks == [[0, 1, 2, 3], [4, 5]]  # one group, cut at 4 members, in job order
    assert lines == ["stack=4: 6 jobs in 2 stacks, #0-3; #4, #5"]
    for name, key in (("adam", "eps=1e-6"), ("sgd", "momentum=0.9"), ("keras_rmsprop", "rho=0.8"),
                      ("rmsprop", "alpha=0.9")):  # each optimizer's numbers are carried per member
        jobs = grid([f"optimizer={name}"], ["seed=0", "seed=1"], [f"optimizer.{key}", "optimizer.lr=0.01"],
                    ["stack=8"])
        assert planned(jobs, tmp_path, caplog)[0] == [[0, 1, 2, 3]], name
    assert planned(grid(["seed=0", "seed=1"], ["stack=1"]), tmp_path, caplog)[0] == []  # off: no plan, no line


def test_a_stack_carries_each_optimizer_setting_the_stacked_step_takes():
    from mnist_lab.stack import STACKABLE

    fields = {k.split(".", 1)[1] for k in config.flat_keys(config.Config) if k.startswith("optimizer.")}
    assert {name: set(keys) for name, keys in stacking.CARRIED.items()} == \
        {name: set(keys) & fields for name, keys in STACKABLE.items()}


def test_what_differs_in_other_keys_makes_groups(tmp_path, caplog):
    jobs = grid(["model=mlp", "model=convnet"], ["trainer.max_epochs=1", "trainer.max_epochs=2"], ["seed=0", "seed=1"],
                ["stack=8"])
    stacks, lines = planned(jobs, tmp_path, caplog)
    assert stacks == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert lines == ["stack=8: 8 jobs in 4 stacks, #0, #1 [model=mlp trainer.max_epochs=1]; #2, #3 [model=mlp "
                     "trainer.max_epochs=2]; #4, #5 [model=convnet trainer.max_epochs=1]; #6, #7 [model=convnet "
                     "trainer.max_epochs=2]"]
    stacks, _ = planned(grid(["optimizer=adam", "optimizer=sgd"], ["seed=0", "seed=1"], ["stack=8"]), tmp_path, caplog)
    assert stacks == [[0, 1], [2, 3]]  # another optimizer: another group


def test_what_cannot_stack_runs_alone_with_its_reason(tmp_path, caplog):
    jobs = grid(["trainer.precision=32-true", "trainer.precision=16-mixed", "trainer.devices=2"],
                ["seed=0", "seed=1"], ["stack=8"])
    stacks, lines = planned(jobs, tmp_path, caplog)
    assert stacks == [[0, 1], [2], [3], [4], [5]]
    assert lines[0] == "stack=8: 6 jobs in 1 stack, #0, #1 [trainer.precision=32-true]; 4 alone (#2-5)"
    assert lines[1:] == ["\t#2 : alone: trainer.precision=16-mixed: a stack trains in 32-true",
                         "\t#3 : alone: trainer.precision=16-mixed: a stack trains in 32-true",
                         "\t#4 : alone: trainer.devices=2: a stack trains on one device",
                         "\t#5 : alone: trainer.devices=2: a stack trains on one device"]
    assert all(len(line) <= 200 for line in lines[1:])
    assert stacking.cannot_stack(config.compose(["trainer=ddp_cpu"])).startswith("trainer.strategy=ddp")
    assert stacking.cannot_stack(config.compose(["trainer.fast_dev_run=true"])).startswith("trainer.fast_dev_run")
    assert stacking.cannot_stack(config.compose(["trainer.gradient_clip_val=1"])).startswith("trainer.gradient_clip")
    assert stacking.cannot_stack(config.compose(["model=convnet", "optimizer=adam"])) is None


def test_slurm_runs_a_stack_as_one_array_task(monkeypatch, tmp_path):
    """launch_stacks hands submitit one array task per stack, each stack's jobs pickled with the launcher, and
    returns every job's return in stack order."""
    from hydra_plugins.mnist_lab.slurm_launcher import SlurmLauncher

    launcher = SlurmLauncher(submitit_folder=str(tmp_path))
    seen = {}

    def launch(job_overrides, initial_job_idx):
        seen.update(overrides=job_overrides, stacks=launcher.stacks, numbers=launcher.numbers)
        return [[JobReturn(overrides=o, status=JobStatus.COMPLETED) for _, o in s] if len(s) > 1 else
                JobReturn(overrides=s[0][1], status=JobStatus.COMPLETED) for s in launcher.stacks]

    monkeypatch.setattr(launcher, "launch", launch)
    stacks = [[(0, ["seed=0"]), (1, ["seed=1"])], [(2, ["trainer.devices=2"])], [(3, ["seed=3"]), (4, ["seed=4"])]]
    returned = launcher.launch_stacks(stacks)
    assert seen["overrides"] == [["seed=0"], ["trainer.devices=2"], ["seed=3"]]  # 3 array tasks
    assert seen["numbers"] == [0, 2, 3] and seen["stacks"] == stacks
    assert [r.overrides for r in returned] == [["seed=0"], ["seed=1"], ["trainer.devices=2"], ["seed=3"], ["seed=4"]]
    assert launcher.stacks is None and launcher.numbers is None


def test_a_stacked_sweep_keeps_every_job_its_own(tiny_mnist, tmp_path):
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, sweep) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "trainer.gradient_clip_val=null,0.5", "seed=0,1", "stack=4",
           "trainer.max_epochs=1", "trainer.limit_train_batches=3", f"hydra.sweep.dir={sweep}", *overrides]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stdout + first.stderr
    assert "stack=4: 4 jobs in 1 stack, #0, #1 [trainer.gradient_clip_val=null]; 2 alone (#2, #3)" in log
    assert "\t#2 : alone: trainer.gradient_clip_val=0.5: a stack does not clip gradients" in log
    assert "1_mlp_seed:1+trainer.gradient_clip_val:null: epoch 1/2: train loss" in first.stdout  # whose line it is
    folders = sorted(runs.find_runs(sweep), key=lambda p: int(p.name.split("_")[0]))
    assert [p.name for p in folders] == ["0_mlp_seed:0+trainer.gradient_clip_val:null",
                                         "1_mlp_seed:1+trainer.gradient_clip_val:null",
                                         "2_mlp_seed:0+trainer.gradient_clip_val:0.5",
                                         "3_mlp_seed:1+trainer.gradient_clip_val:0.5"]
    for n, run in enumerate(folders):
        hydra = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra["job"]["num"] == n and hydra["runtime"]["output_dir"] == str(run)
        assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == hydra["overrides"]["task"]
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["seed"] == n % 2
        assert yaml.safe_load((run / "config.yaml").read_text())["output_dir"] == str(run)
        assert yaml.safe_load((run / "provenance.yaml").read_text())["command"]["overrides"] == \
            hydra["overrides"]["task"]  # its own job's, though its stack's members share one process
        assert runs.finished(run)
    ends = (sweep / "sweep.log").read_text().splitlines()
    assert [line.split("] ", 1)[1].split(":")[0] for line in ends] == [
        "job 0 (trainer.gradient_clip_val=null seed=0) finished", "job 1 (trainer.gradient_clip_val=null seed=1) "
        "finished", "job 2 (trainer.gradient_clip_val=0.5 seed=0) finished",
        "job 3 (trainer.gradient_clip_val=0.5 seed=1) finished"]

    # again, with job 1 gone: jobs 0, 2 and 3 kept, job 1 trained alone in its own folder and number
    shutil.rmtree(folders[1])
    kept = {f: f.stat().st_mtime_ns for run in folders if run.exists() for f in run.rglob("*") if f.is_file()}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "4 jobs, 3 finished (kept), 0 interrupted (resumed from their last.ckpt), 1 to run from the start" in log
    assert "stack=4: 1 job in 0 stacks; 1 alone (#1)" in log and again.stdout.count("test: ") == 1
    assert runs.finished(folders[1]) and {f: f.stat().st_mtime_ns for f in kept} == kept
    assert len((sweep / "sweep.log").read_text().splitlines()) == 5


def test_interrupted_jobs_stack_with_those_resuming_from_the_same_epoch(tmp_path, caplog):
    import torch

    for n, epoch in ((0, 1), (1, 2), (2, 1)):  # jobs 0 and 2 saved their last.ckpt in epoch 1, job 1 in epoch 2
        (tmp_path / str(n) / "checkpoints").mkdir(parents=True)
        torch.save({"epoch": epoch}, tmp_path / str(n) / "checkpoints" / "last.ckpt")
    stacks, _ = planned(grid([f"seed={s}" for s in range(5)], ["stack=4"]), tmp_path, caplog)
    assert stacks == [[0, 2], [1], [3, 4]]  # 3 and 4: not started
