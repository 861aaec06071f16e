"""A disk that fills at any phase of a run (simulated: tests/fulldisk.py): one line naming it and how to go on, no
traceback (TensorBoard's writer thread included); once there is space the same run finishes with its whole
result.yaml, and no scalar is logged twice at one step (read across the run's event files with EventAccumulator)."""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from collections import Counter

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lab import compare, runs
from mnist_lab.console import RunLog
from mnist_lab.errors import WriteError
from mnist_lab.train import train
from tests import fulldisk
from tests.conftest import run_cli, tiny_overrides

PHASES = {  # where the disk fills: the first file opened for writing whose path matches
    "tensorboard": r"events\.out\.tfevents",  # TensorBoard's writer thread, as the fit starts
    "checkpoint": r"last\.ckpt",  # epoch 1's last.ckpt, after its best.ckpt
    "figures": r"confusion_matrix\.png",  # trained and tested
    "result": r"result\.yaml",  # trained, tested, figures drawn
}


def first_on_path(site) -> dict[str, str]:
    """The environment that puts `site` (fulldisk.sitecustomize's folder) first on a command's PYTHONPATH."""
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}


def one_line(message: str) -> str:
    assert "\n" not in message and len(message) <= 200, (len(message), message)
    return message


def scalars_twice(run) -> dict[str, list[int]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    steps = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {tag: s for tag, s in steps.items() if any(n > 1 for n in Counter(s).values())}


@pytest.mark.parametrize("phase", PHASES)
def test_a_full_disk_is_one_line_and_the_run_finishes_once_there_is_space(phase, tiny_mnist, tmp_path, make_cfg,
                                                                          monkeypatch, capfd):
    run, mark = tmp_path / "run", tmp_path / "full"
    overrides = tiny_overrides(tiny_mnist, run)
    printed = []  # what reaches Python's hook for a thread's uncaught error: a traceback on the console
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    fulldisk.fill(monkeypatch, tmp_path, mark, at=PHASES[phase])
    with pytest.raises(WriteError) as err:
        train(make_cfg(overrides))
    assert not printed  # TensorBoard's writer thread's error is said once, in the line
    assert fulldisk.refused()  # the disk was full where meant
    line = one_line(str(err.value))
    assert re.match(r"^the disk is full \(.* free\): writing .* failed; free space, then (resume: python -m "
                    rf"mnist_lab\.train resume={re.escape(runs.shown(run))}|run the same command again)$", line), line
    if phase == "tensorboard":
        assert "writing TensorBoard's event file failed" in line
    assert "Traceback" not in capfd.readouterr().err
    assert not runs.RunDir(run).result.exists()

    fulldisk.free(mark)
    if phase == "result":  # a real full disk may cut the event file's last record short
        events = next(run.glob("events.out.tfevents.*"))
        with open(events, "ab") as f:
            f.write(b"\x2a\x00\x00\x00")  # the first bytes of a record's length
        assert compare.damaged_event_files(run)
    again = [*overrides, f"resume={run}"] if "resume=" in line else overrides
    metrics = train(make_cfg(again))
    assert runs.finished(run), runs.result_problem(run)  # the whole record: train, val and test metrics
    assert metrics == {k: v for k, v in runs.result_metrics(run).items() if k.startswith("test/")}
    assert not scalars_twice(run)
    assert not compare.damaged_event_files(run)  # a torn record cut off as the run went on, kept beside it:
    assert len(list(run.glob("events.out.torn.*"))) == (phase == "result")
    if phase == "checkpoint":  # epoch 1's best.ckpt was whole: resume= went on from it, not from the start
        log = (run / "train.log").read_text()
        assert re.search(r"resuming .* from checkpoints/best\.ckpt, saved after step \d+ \(epoch 1\)", log), log


def test_a_disk_full_from_the_start_is_one_line_and_leaves_no_folder(tiny_mnist, tmp_path):
    mark = tmp_path / "full"
    site = fulldisk.sitecustomize(tmp_path / "site", tmp_path / "work", mark)
    (tmp_path / "work").mkdir()
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    result = run_cli([*overrides, "hydra.run.dir=outputs/run"], cwd=tmp_path / "work", timeout=120,
                     env=first_on_path(site))
    assert result.returncode == 1
    line = one_line(result.stderr.strip())
    assert re.match(r"^the disk is full that would hold outputs/run \(.* free\): free space, then run the same "
                    r"command again$", line), result.stderr
    assert not (tmp_path / "work" / "outputs").exists()


def test_train_log_keeps_the_lines_a_full_disk_refused_and_ends_with_the_last(tmp_path, monkeypatch):
    mark = tmp_path / "full"
    handler = RunLog(tmp_path / "train.log")
    log = logging.getLogger("test_full_disk")
    log.addHandler(handler)
    try:
        log.error("before")
        fulldisk.fill(monkeypatch, tmp_path, mark)
        log.error("refused 1")
        log.error("refused 2")
        fulldisk.free(mark)  # room again (a failed checkpoint's temporary file removed)
        log.error("the error line")
    finally:
        log.removeHandler(handler)
        handler.close()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.rsplit(" - ", 1)[1] for line in lines] == ["before", "refused 1", "refused 2", "the error line"]
    assert os.path.getsize(tmp_path / "train.log") == len("\n".join(lines)) + 1


def test_a_sweep_stopped_by_a_full_disk_finishes_with_the_same_command(tiny_mnist, tmp_path):
    """Job 0's epoch-1 last.ckpt fills the disk: its line, then the sweep's (Hydra cannot write job 1's record);
    once there is space the same command resumes job 0 from its best.ckpt and runs job 1."""
    mark, work = tmp_path / "full", tmp_path / "work"
    work.mkdir()
    site = fulldisk.sitecustomize(tmp_path / "site", work, mark, at=r"last\.ckpt")
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith("output_dir=")]
    command = ["-m", *overrides, "seed=0,1", "hydra.sweep.dir=sweep"]
    result = run_cli(command, cwd=work, env=first_on_path(site))
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert re.search(r"job 0 \(seed=0\) failed: the disk is full .*free space, then run the same command again "
                     r"\(the sweep resumes this job\)", result.stdout + result.stderr), result.stdout + result.stderr
    last = one_line(result.stderr.strip().splitlines()[-1])
    assert re.match(r"^the disk is full \(.* free\): writing into sweep failed; free space, then run the same command "
                    r"again \(finished jobs are kept\)$", last), result.stderr

    fulldisk.free(mark)
    result = run_cli(command, cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(p for p in (work / "sweep").iterdir() if p.is_dir())
    assert len(jobs) == 2 and all(runs.finished(job) for job in jobs), [runs.result_problem(j) for j in jobs]
    assert not any(scalars_twice(job) for job in jobs)
    assert "2 jobs, 0 finished (kept), 1 interrupted" in result.stdout  # job 0: its best.ckpt is whole
    assert "resuming from" in result.stdout and "0_mlp_seed:0/checkpoints/best.ckpt" in result.stdout


def test_a_sweep_whose_figures_meet_a_full_disk_ends_non_zero_and_the_same_command_draws_them(tiny_mnist, tmp_path):
    """The figures of a sweep's job are drawn by a worker process beside the sweep: the disk fills there. Said in
    one line (no traceback), exit status 1; once there is space the same command draws them, nothing lost."""
    mark, work = tmp_path / "full", tmp_path / "work"
    work.mkdir()
    site = fulldisk.sitecustomize(tmp_path / "site", work, mark, at=r"confusion_matrix\.png")
    overrides = [o for o in tiny_overrides(tiny_mnist, tmp_path) if not o.startswith(("output_dir=", "trainer.max"))]
    command = ["-m", *overrides, "trainer.max_epochs=1", "seed=0", "hydra.sweep.dir=sweep"]
    result = run_cli(command, cwd=work, env=first_on_path(site))
    assert mark.exists()  # the worker filled the disk
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert all(len(line) <= 200 for line in result.stderr.strip().splitlines()), result.stderr
    assert re.search(r"the figures of sweep/0_mlp_\S* were not drawn: No space left on device .*free space, then "
                     "run the same command again: it draws them", result.stdout + result.stderr), result.stdout

    fulldisk.free(mark)
    result = run_cli(command, cwd=work)
    assert result.returncode == 0, result.stderr[-2000:]
    job = next((work / "sweep").glob("0_mlp_*"))
    assert runs.finished(job), runs.result_problem(job)
    assert all((job / f"{name}.png").is_file() for name in ("history", "confusion_matrix", "per_class", "mistakes"))
    assert not scalars_twice(job)


def test_a_quota_is_named_as_such_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = runs.RunDir("outputs/runs/2026-11-23_04-18-05-760123")  # as a user's run folder reads
    run.checkpoints.mkdir(parents=True)
    (run.path / "config.yaml").write_text("seed: 0\n")
    run.last_ckpt.write_bytes(b"the earlier one")
    try:
        raise runs.write_failed(run.last_ckpt, OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)))
    except WriteError as err:
        line = one_line(runs.full_disk_line(err, run.path))
    resume = re.escape(f"resume: python -m mnist_lab.train resume={runs.shown(run.path)}")
    assert re.match(rf"^the quota is exceeded \(.* free\): writing checkpoints/last\.ckpt \(the earlier one kept\) "
                    rf"failed; free space, then {resume}$", line), line
