"""A sweep through hydra/launcher=slurm on a real (local, single-node) Slurm.

Runs only with MNIST_LAB_SLURM=1 (CI sets it): scripts/slurm_local.sh then installs slurm-wlm and munge
when missing (root and apt-get needed), starts the daemons, and stops them afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slurm
SCRIPT = REPO / "scripts" / "slurm_local.sh"


@pytest.fixture(scope="module")
def slurm():
    if os.environ.get("MNIST_LAB_SLURM") != "1":
        pytest.skip("set MNIST_LAB_SLURM=1 to run the Slurm tests (root: scripts/slurm_local.sh installs and "
                    "starts a local Slurm)")
    if os.geteuid() != 0:
        pytest.skip("a local Slurm needs root (munged runs as user munge)")
    was_up = "slurmd: running" in subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True,
                                                  text=True).stdout
    up = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=600)
    if up.returncode != 0 and ("could not install" in up.stderr or "not installed" in up.stderr):
        pytest.skip(up.stderr.strip())  # no package mirror here: nothing to test against
    assert up.returncode == 0, up.stderr
    try:
        yield
    finally:
        if not was_up:
            subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, timeout=120)


def test_sweep_on_slurm(slurm, tiny_mnist, tmp_path):
    assert shutil.which("sbatch")
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "hydra/launcher=slurm", "trainer=cpu", "model=mlp,convnet",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
           *overrides, "trainer.max_epochs=1"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name.split("_")[1] for r in runs] == ["mlp", "convnet"]
    for run in runs:
        assert (run / "checkpoints" / "best.ckpt").is_file(), run
        events = EventAccumulator(str(run), size_guidance={"scalars": 0})
        events.Reload()
        assert 0 <= events.Scalars("test/acc")[-1].value <= 1
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2 and all("SLURM" in log.read_text() or log.stat().st_size > 0 for log in logs)
    for log in logs:  # a Slurm log is a file: a line per epoch, no progress-bar redraws
        text = log.read_text()
        assert "\r" not in text and re.search(r"^epoch 1/1: train loss \d\.\d{4} acc ", text, re.M), text[-2000:]
    ends = (sweep / "sweep.log").read_text().splitlines()  # each job, on its node, adds how it ended
    assert len(ends) == 2 and all(") finished: test/acc " in line for line in ends), ends
    record = yaml.safe_load((runs[0] / "provenance.yaml").read_text())
    assert record["slurm"]["job_id"] and record["host"]["world_size"] == 1

    # the same command again, with job 0 gone (never started) and job 1 finished: one Slurm job, job 0's,
    # keeping its number and folder name
    shutil.rmtree(runs[0])
    kept = (runs[1] / "result.yaml").stat().st_mtime_ns
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "2 jobs, 1 finished (kept), 0 interrupted (resumed from their last.ckpt), 1 to run from the start" in \
        again.stdout + again.stderr
    assert (runs[0] / "result.yaml").is_file() and (runs[1] / "result.yaml").stat().st_mtime_ns == kept
    assert len(list((sweep / ".submitit").rglob("*_log.out"))) == 3  # one more Slurm job


def test_preempted_job_is_requeued_and_resumes(slurm, tiny_mnist, tmp_path):
    """SIGUSR2, as Slurm sends it on preemption: submitit requeues the job, which resumes from last.ckpt.

    Slurm holds a requeued job for about two minutes before it may start again; the test lets it start at once.
    """
    import time

    import torch

    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "hydra/launcher=slurm", "trainer=cpu", "model=mlp", "seed=0",
           "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}", *overrides, "trainer.max_epochs=200"]
    launcher = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 120
        while not list(sweep.glob("0_*/checkpoints/last.ckpt")) and time.time() < deadline:
            time.sleep(0.5)
        job = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())  # ours, not another's
        for _ in range(20):  # the job may still be starting its step
            if subprocess.run(["scancel", "--signal=USR2", job], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"could not signal Slurm job {job}")
        # Slurm holds a requeued job (Reason=BeginTime, about two minutes): StartTime=now, as an admin would, lets
        # it start again at once
        deadline = time.time() + 60
        while launcher.poll() is None and time.time() < deadline:
            queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
            if "PENDING" in queued.split():
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
                break
            time.sleep(0.5)
        out, _ = launcher.communicate(timeout=420)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, out[-3000:]
    run = next(sweep.glob("0_*"))
    log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.out"))
    assert "this job is preempted" in log and "Requeued job" in log
    assert f"requeued job: resuming from {run / 'checkpoints' / 'last.ckpt'}" in log
    last = torch.load(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 200 * 16  # all 200 epochs of 16 steps (500 images, batch 32), across two starts


def test_study_runs_two_trials_at_a_time_on_slurm(slurm, tiny_mnist, tmp_path):
    """hydra/sweeper=optuna on hydra/launcher=slurm: each trial a Slurm job, n_jobs=2 of them at once, each
    reporting to and telling the study in the sweep folder's journal."""
    import optuna

    from mnist_lab.study import JOURNAL, open_storage

    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "hydra/sweeper=optuna", "hydra/launcher=slurm", "trainer=cpu",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "optimizer.lr=tag(log, interval(1e-4, 1e-2))",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
           *overrides, "trainer.max_epochs=1"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    study = optuna.load_study(study_name="mnist_lab", storage=open_storage(str(sweep / JOURNAL)))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        events = EventAccumulator(trial.user_attrs["run"], size_guidance={"scalars": 0})
        events.Reload()
        assert trial.intermediate_values and trial.user_attrs["test/acc"] == events.Scalars("test/acc")[-1].value
    jobs = slurm_jobs(sweep / ".submitit")  # side by side, as Slurm ran them (not how fast each trained)
    assert [j["JobState"] for j in jobs] == ["COMPLETED", "COMPLETED"], jobs
    assert max(j["StartTime"] for j in jobs) < min(j["EndTime"] for j in jobs), jobs
    logs = sorted((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2 and all("test: test/loss=" in log.read_text() for log in logs)  # trained in Slurm jobs


def slurm_jobs(submitit_dir) -> list[dict[str, str]]:
    """What `scontrol show job` says of each job that submitit kept a folder for (<job id> or <array id>_<task>):
    its fields, e.g. JobState, StartTime, EndTime (ISO times, to the second; kept for MinJobAge after the end)."""
    jobs: dict[str, dict[str, str]] = {}
    for folder in sorted(p for p in submitit_dir.iterdir() if p.is_dir() and re.fullmatch(r"\d+(_\d+)?", p.name)):
        shown = subprocess.run(["scontrol", "--oneliner", "show", "job", folder.name], capture_output=True, text=True,
                               check=True).stdout
        for line in shown.splitlines():  # an array's id shows each of its tasks, a line each
            fields = dict(field.split("=", 1) for field in line.split() if "=" in field)
            jobs[fields["JobId"]] = fields
    return [jobs[k] for k in sorted(jobs, key=int)]


def test_a_stack_is_one_slurm_job(slurm, tiny_mnist, tmp_path):
    """stack=2 on hydra/launcher=slurm: two seeds in one Slurm job, each its own Hydra job (folder, number,
    .hydra/ files with the Slurm job id, sweep.log line)."""
    sweep = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "hydra/launcher=slurm", "trainer=cpu", "seed=0,1", "stack=2",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
           *overrides, "trainer.max_epochs=1"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "stack=2: 2 jobs in 1 stack, #0, #1" in result.stdout + result.stderr
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 1 and "test: test/loss=" in logs[0].read_text()  # one Slurm job trained both
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [r.name for r in runs] == ["0_mlp_seed:0", "1_mlp_seed:1"]
    for n, run in enumerate(runs):
        job = yaml.safe_load((run / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]
        assert job["num"] == n and str(job["id"]).split("_")[0].isdigit()
        assert (run / "result.yaml").is_file()
    ends = (sweep / "sweep.log").read_text().splitlines()
    assert len(ends) == 2 and all(") finished: test/acc " in line for line in ends), ends
