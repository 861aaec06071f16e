"""A multirun over both models on generated data, read back with TensorBoard's own reader; a sweep killed
half-way and resumed."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from mnist_lab import compare, runs, sweeps
from mnist_lab.figures import FIGURES
from tests.conftest import tiny_overrides

SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "train/epoch_s"}
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def sweep_command(data: Path, sweep_dir: Path, *args: str) -> list[str]:
    overrides = [o for o in tiny_overrides(data, sweep_dir) if not o.startswith("output_dir=")]
    return [sys.executable, "-m", "mnist_lab.train", "-m", "model=mlp,convnet", "seed=0,1", "trainer.max_epochs=2",
            f"hydra.sweep.dir={sweep_dir}", *overrides, *args]


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    result = subprocess.run(sweep_command(tiny_mnist, root / "sweep"), capture_output=True, text=True,
                            timeout=600, env=ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "sweep"


def test_runs_named_by_what_varies(sweep):
    names = sorted(p.name for p in runs.find_runs(sweep))
    assert names == ["0_mlp_seed:0", "1_mlp_seed:1", "2_convnet_seed:0", "3_convnet_seed:1"]  # no constant in them
    assert all(len(n) <= 30 for n in names)
    record = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    assert {"trainer.max_epochs=2", "data.batch_size=32"} <= set(record)  # the constants, said once
    found, shared = compare.by_what_varies([compare.read_run(p) for p in runs.find_runs(sweep)])
    assert [r.variant for r in found] == ["mlp", "mlp", "convnet", "convnet"]  # compare's variants: the same
    assert {"trainer.max_epochs=2", "data.batch_size=32", "data.val_size=100"} <= set(shared)
    assert not any(o.startswith(("data.data_dir", "threads", "seed")) for o in shared)


def test_a_sweep_begun_with_names_from_every_override_keeps_them():
    from omegaconf import OmegaConf

    config = OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN"]},
                                         "job": {"config": {"override_dirname": {"exclude_keys": ["model"]}}}}})
    jobs = [["model=mlp", "seed=0", "trainer.max_epochs=2"], ["model=mlp", "seed=1", "trainer.max_epochs=2"]]
    before = OmegaConf.to_container(config)
    sweeps.name_by_what_varies(config, jobs, (["model=mlp", "seed=0,1", "trainer.max_epochs=2"], []))
    assert OmegaConf.to_container(config) == before  # its record has no exclude_keys: its names stay
    sweeps.name_by_what_varies(config, jobs, None)  # a new sweep: its constants leave the names
    assert list(config.hydra.job.config.override_dirname.exclude_keys) == ["model", "trainer.max_epochs"]
    assert config.hydra.overrides.hydra[-1] == f"{sweeps.EXCLUDE_KEYS}=[model,trainer.max_epochs]"
    again = OmegaConf.to_container(config)
    sweeps.name_by_what_varies(config, jobs, (["seed=0,1"], list(config.hydra.overrides.hydra)))
    assert OmegaConf.to_container(config) == again  # resume=: the saved override already says it


def test_event_files_hold_scalars_hparams_and_images(sweep):
    for run in runs.find_runs(sweep):
        events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        tags = events.Tags()
        assert SCALARS <= set(tags["scalars"]), run.name
        assert len(events.Scalars("val/acc")) == 2 and len(events.Scalars("train/epoch_s")) == 2
        assert {"test/predictions", "test/confusion_matrix"} <= set(tags["images"]), run.name
        assert "epoch" not in tags["scalars"]  # Lightning's epoch-against-step chart, first in the Scalars tab
        assert all(math.isfinite(e.value) for tag in tags["scalars"] for e in events.Scalars(tag))  # no NaN

        # HPARAMS: the swept keys and the model first, booleans and strings as such, paths left out
        hparams = events.PluginTagToContent("hparams")
        experiment = metadata.parse_experiment_plugin_data(hparams[metadata.EXPERIMENT_TAG])
        infos = sorted(experiment.hparam_infos, key=lambda h: (not h.differs, h.name))  # TensorBoard's order
        assert [h.name for h in infos[:2]] == ["model.name", "seed"] and not infos[2].differs
        names = {h.name for h in infos}
        assert {"optimizer.lr", "data.batch_size", "trainer.max_epochs"} <= names
        assert not names & {"output_dir", "data.data_dir", "threads", "resume", "trainer.enable_progress_bar"}
        assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "val/loss", "test/acc", "test/loss"]
        start = metadata.parse_session_start_info_plugin_data(hparams[metadata.SESSION_START_INFO_TAG]).hparams
        assert start["data.normalize"].WhichOneof("kind") == "bool_value" and start["data.normalize"].bool_value
        assert start["model.name"].string_value == run.name.split("_")[1]
        assert start["seed"].string_value in ("0", "1")  # whole numbers read as such (no 0.0000)
        assert start["data.batch_size"].string_value == "32"
        assert start["optimizer.lr"].WhichOneof("kind") == "number_value"


def test_compare_table_and_png(sweep, capsys):
    assert compare.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mlp") or line.startswith("| convnet")]
    assert len(rows) == 2, out
    mlp = next(r for r in rows if r.startswith("| mlp"))
    assert "407,050" in mlp and "| 2 |" in mlp and "±" in mlp
    assert "93,322" in next(r for r in rows if r.startswith("| convnet"))
    assert out.startswith("4 runs; seeds 0, 1; every run: ")  # the constants, once
    pair = next(line for line in out.splitlines() if line.startswith("- convnet"))
    assert pair.startswith("- convnet - mlp: ") and " test acc, 95% CI [" in pair and "; 2 seeds: " in pair
    assert out.startswith((sweep / "compare.md").read_text())  # the file holds what was printed
    assert (sweep / "compare.csv").read_text().startswith("variant,metric,n,mean,std,ci_low,ci_high,seeds,values")
    png = sweep / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_on_an_empty_folder(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 1
    assert "no runs under" in capsys.readouterr().err


def table_without_times(sweep_dir: Path) -> str:
    """compare's table, less its seconds-per-epoch column (wall time differs from run to run)."""
    lines = compare.table([compare.read_run(p) for p in runs.find_runs(sweep_dir)]).splitlines()
    return "\n".join(line.rsplit("|", 2)[0] if line.startswith("|") else line for line in lines)


def test_killed_sweep_resumes_with_the_same_command(sweep, tiny_mnist, tmp_path):
    """Killed (SIGKILL) during job 2 of 4; the same command then trains jobs 2 (from its last.ckpt) and 3 only."""
    killed = tmp_path / "sweep"
    cmd = sweep_command(tiny_mnist, killed)
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                             start_new_session=True)
    deadline = time.time() + 300
    while not list(killed.glob("2_*/checkpoints/last.ckpt")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
    first.wait()
    (job2,) = killed.glob("2_*")
    assert (job2 / "checkpoints" / "last.ckpt").is_file() and not (job2 / "result.yaml").exists()
    assert not list(killed.glob("3_*"))
    done = [p for p in killed.glob("[01]_*") if (p / "result.yaml").is_file()]
    assert len(done) == 2
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = done[0] / f".history.png.tmp-{dead.pid}"  # a drawing killed mid-write
    stale.write_bytes(b"\x89PNG half")
    kept = {f: f.stat().st_mtime_ns for d in done for f in d.rglob("*") if f.is_file() and f != stale}

    changed = subprocess.run([*cmd, "seed=0,1,2"], capture_output=True, text=True, timeout=120, env=ENV)
    assert changed.returncode == 1
    assert "this sweep began with other overrides: seed=0,1,2 (was: seed=0,1); continue it with python -m " \
           "mnist_lab.train -m resume=" in changed.stderr

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert "4 jobs, 2 finished (kept), 1 interrupted (resumed from their last.ckpt), 1 to run from the start" in log
    assert again.stdout.count("test: ") == 2  # trained: jobs 2 and 3, nothing else
    assert f"resumed sweep: resuming from {job2 / 'checkpoints' / 'last.ckpt'}" in again.stdout
    assert {f: f.stat().st_mtime_ns for f in kept} == kept  # the finished jobs' files untouched
    assert not stale.exists()  # cleared
    for run in runs.find_runs(killed):  # a figure the killed sweep's worker had not drawn is drawn now
        assert all((run / f"{name}.png").is_file() for name in FIGURES), run
    assert sorted(p.name for p in runs.find_runs(killed)) == sorted(p.name for p in runs.find_runs(sweep))
    assert table_without_times(killed) == table_without_times(sweep)


def test_damaged_files_of_a_sweep_are_said_and_mended(sweep, tiny_mnist, tmp_path):
    """A result.yaml empty, cut short, garbled or a plain string: the job is tested again from its last.ckpt, one
    line naming the file, and its record is whole again; where last.ckpt is damaged too, it is set aside and the job
    trained again. A finished job's damaged test_outputs.npz: said, the sweep goes on."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    jobs = sorted(runs.find_runs(copy), key=lambda p: int(p.name.split("_")[0]))
    whole = {job.name: yaml.safe_load((job / "result.yaml").read_text()) for job in jobs}
    for job, text in ((jobs[0], ""), (jobs[2], "metrics: {test/acc: [1,\n"), (jobs[3], "done")):
        (job / "result.yaml").write_text(text)
    last = jobs[3] / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:3000])
    (jobs[1] / "history.png").unlink()  # finished, a figure not drawn yet, and its test outputs damaged
    (jobs[1] / "test_outputs.npz").write_bytes(b"PK\x03\x04 not a zip")

    again = subprocess.run(sweep_command(tiny_mnist, copy), capture_output=True, text=True, timeout=600, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    for n, problem in ((0, "empty"), (2, "not valid YAML (line 2)"), (3, "no metrics")):
        assert f"{jobs[n] / 'result.yaml'} is not a whole record ({problem}): tested again from its last.ckpt" in log
    npz = re.escape(str(jobs[1] / "test_outputs.npz"))
    assert re.search(rf"{npz} is damaged \(.+\): remove it and the run's result.yaml", log)
    assert re.search(rf"{re.escape(str(last))} is damaged \(no checkpoint this job can resume from\): kept as "
                     r"last.ckpt.damaged-\w+; the job starts again from the beginning", log)
    assert again.stdout.count("test: ") == 3 and again.stdout.count("epoch 1/2") == 1  # job 3 alone trained
    for job in jobs:
        assert yaml.safe_load((job / "result.yaml").read_text())["metrics"] == whole[job.name]["metrics"], job.name


def test_the_same_sweep_started_twice_runs_once(tiny_mnist, tmp_path):
    """A double submit: the second copy stops at once in one line naming the first; the first runs every job once."""
    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in tiny_overrides(tiny_mnist, sweep_dir) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "seed=0,1", "trainer.max_epochs=1",
           f"hydra.sweep.dir={sweep_dir}", *overrides]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        deadline = time.time() + 120
        while not (sweep_dir / ".lock").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # the first holds the sweep however long the second takes to start
        try:
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
        finally:
            first.send_signal(signal.SIGCONT)
        out, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert second.returncode == 1
    said = second.stderr.splitlines()[0]
    assert re.fullmatch(rf"sweep {sweep_dir} is in use by pid {first.pid} on \S+ \(since [\d: -]+\): let that one "
                        r"finish, or stop it and run the same command again", said), second.stderr
    assert first.returncode == 0, out[-3000:]
    log = (sweep_dir / "sweep.log").read_text().splitlines()
    assert len(log) == 2 and all(" finished: " in line for line in log), log
    assert not list(sweep_dir.rglob(".lock"))


def test_resume_with_the_sweep_folder_alone(tmp_path):
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    record = {"hydra": {"overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra/launcher=slurm", "hydra.sweep.dir=x"],
                                      "task": ["model=mlp,convnet", "seed=0,1", "threads=1"]}}}
    (sweep_dir / "multirun.yaml").write_text(yaml.safe_dump(record))
    assert runs.is_sweep(sweep_dir)
    argv = sweeps.resume_argv(sweep_dir, [], [f"resume={sweep_dir}", "threads=2", "hydra.launcher.partition=a"])
    assert argv == ["-m", "hydra/launcher=slurm", "model=mlp,convnet", "seed=0,1", "threads=2",
                    "hydra.launcher.partition=a", f"hydra.sweep.dir={sweep_dir}"]
    with pytest.raises(Exception, match=r"continues the sweep with its saved overrides; drop optimizer.lr=1"):
        sweeps.resume_argv(sweep_dir, ["-m"], [f"resume={sweep_dir}", "optimizer.lr=1"])
    assert sweeps.changed_overrides(["seed=0,1", "threads=1"], ["seed=0,1", "threads=2"]) == []  # may differ
    assert sweeps.changed_overrides(["seed=0,1", "optimizer.lr=1"], ["seed=0,1,2", "trainer.max_epochs=3"]) == \
        ["seed=0,1,2 (was: seed=0,1)", "trainer.max_epochs=3 (new)", "no optimizer.lr (was: optimizer.lr=1)"]
