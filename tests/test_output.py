"""What a run prints and keeps: a line per epoch in a file, its log, one-line errors of at most 200 characters,
checkpoints that a full disk cannot destroy, data checked before a run folder is made, --help."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mnist_lab import guards, idx
from mnist_lab.errors import ConfigError, DataError, Interrupted, WriteError
from mnist_lab.module import LitClassifier, load_checkpoint
from mnist_lab.train import train
from tests.conftest import run_cli, tiny_overrides

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): train loss \d\.\d{4} acc \d\.\d{4}, val loss \d\.\d{4} acc \d\.\d{4}, "
                        r"\d+\.\d s$")
RUN = "outputs/runs/2026-11-23_04-18-05-760123"  # a run folder as a user sees it, relative to where they are


def one_line(message: str) -> str:
    assert "\n" not in message and len(message) <= 200, (len(message), message)
    return message


# 1. Output that suits where it goes -------------------------------------------------------------------------------

def test_a_run_into_a_file_prints_a_line_per_epoch_and_its_log_keeps_them(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tiny_mnist, run) if not o.startswith(("output_dir=", "trainer.enable"))]
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:  # files: not a terminal
        result = run_cli([f"hydra.run.dir={run}", *overrides], cwd=tmp_path, stdout=out, stderr=err)
    stdout, stderr = (tmp_path / "stdout").read_text(), (tmp_path / "stderr").read_text()
    assert result.returncode == 0, stderr[-3000:]
    assert "\r" not in stdout + stderr  # no progress-bar redraws
    lines = [line for line in stdout.splitlines() if line.strip()]
    epochs = [line for line in lines if EPOCH_LINE.match(line)]
    assert [EPOCH_LINE.match(line).groups() for line in epochs] == [("1", "2"), ("2", "2")]
    assert lines[-1].startswith("test: test/loss=") and "test/acc=" in lines[-1]  # the test metrics last
    for noise in ("Tip:", "litlogger", "Traceback", "GPU available", "Checkpoint directory"):
        assert noise not in stdout + stderr, noise
    log = (run / "train.log").read_text()
    for line in [*epochs, lines[-1], 'Model: "mlp"']:
        assert f"] - {line}" in log, line
    assert "Tip:" not in log and "GPU available:" in log  # Lightning's own lines: in the log only
    # the run folder holds what the README lists, exactly
    names = {p.name for p in run.iterdir()}
    events = {n for n in names if n.startswith("events.out.tfevents.")}
    assert len(events) == 3  # written while training, while testing, and with the figures drawn after it
    assert names - events - {"provenance.diff"} == {  # the diff only where the checkout has uncommitted changes
        ".hydra", "config.yaml", "train.log", "summary.txt", "hparams.yaml", "checkpoints", "provenance.yaml",
        "result.yaml", "history.png", "per_class.png", "mistakes.png", "confusion_matrix.png", "test_outputs.npz"}
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}


def test_help_shows_groups_choices_and_every_key(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert re.search(r"^  hydra/launcher +basic\*, slurm\b", text, re.M)
    assert re.search(r"^  model +convnet, mlp\*$", text, re.M)
    assert re.search(r"^  optimizer\.lr +0\.001 +Keras's RMSprop default", text, re.M)
    assert re.search(r"^  trainer\.enable_progress_bar +null +null: a live bar where the output is a terminal", text,
                     re.M)
    keys = [line.split()[0] for line in text.splitlines() if re.match(r"^  [a-z_]+(\.[a-z_]+)+ ", line)]
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert len(keys) > 30 and all(len(lines[k].split(None, 2)) == 3 for k in keys), "a key without its meaning"
    slurm = run_cli(["hydra/launcher=slurm", "--help"], cwd=tmp_path, timeout=120)
    assert re.search(r"^  hydra\.launcher\.timeout_min +60 +the job's time limit, in minutes", slurm.stdout, re.M)


# 2. Interrupts, errors: one line, and in the run's log --------------------------------------------------------------

def test_a_second_ctrl_c_stops_at_once_and_says_what_there_is(tiny_mnist, tmp_path, make_cfg, monkeypatch,
                                                              ctrl_c):
    monkeypatch.chdir(tmp_path)
    sent = []

    def twice(self, outputs, batch, batch_idx):
        if self.global_step > 16 and not sent:  # in epoch 2 (16 steps an epoch), after last.ckpt of epoch 1
            sent.append(self.global_step)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(LitClassifier, "on_train_batch_end", twice, raising=False)
    with pytest.raises(Interrupted) as err:
        train(make_cfg(tiny_overrides(tiny_mnist, Path(RUN)) + ["trainer.max_epochs=3"]))
    expected = ("SIGINT received again: stopped at once in epoch 2, saving nothing more; resume from "
                f"checkpoints/last.ckpt with: python -m mnist_lab.train resume={RUN}")
    assert one_line(str(err.value)) == expected
    assert load_checkpoint(Path(RUN) / "checkpoints" / "last.ckpt")["global_step"] == 16
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert f"[ERROR] - {err.value}" in (Path(RUN) / "train.log").read_text()


@pytest.mark.parametrize("damage, expected", [
    ("seed: 0\nmodel: {name: mlp\n", r"its config.yaml is not valid YAML \(line 3\); fix it, or restore it from "
                                     r"\.hydra/config\.yaml there \(the config the run started with\)$"),
    ("optimizer: {lr: banana}\n", r"its config.yaml holds an invalid optimizer.lr: 'banana'; fix it, or restore it"),
    ("optimizer: {lr: -1}\n",
     r"in its config.yaml, optimizer.lr=-1.0 is invalid: the learning rate must be a number > 0"),
])
def test_resume_of_a_damaged_config_is_one_line(tiny_mnist, tmp_path, make_cfg, monkeypatch, damage, expected):
    monkeypatch.chdir(tmp_path)
    run = Path(RUN)
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "config.yaml").write_text(damage)
    with pytest.raises(ConfigError, match=rf"^resume={RUN}: {expected}") as err:
        train(make_cfg(tiny_overrides(tiny_mnist, run) + [f"resume={run}"]))
    one_line(str(err.value))
    assert f"[ERROR] - {err.value}" in (run / "train.log").read_text()  # the resumed run's record has it


# 3. A checkpoint write that fails part-way --------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB tmpfs (needs root), or None where none can be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                                                       capture_output=True).returncode == 0
    try:
        yield disk if mounted else None
    finally:
        if mounted:
            os.chdir(tmp_path)  # out of it (monkeypatch restores the working folder after this)
            if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # still busy: detach it


class FullDisk(io.FileIO):
    """A file on a simulated disk that has `free[0]` bytes left: a write beyond them fails with ENOSPC."""

    free = [0]

    def __init__(self, path, mode="r", *args, **kwargs):
        super().__init__(path, mode.replace("b", ""))

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self.free[0]:
            super().write(memoryview(data).cast("B")[: self.free[0]])  # part of it, as a full disk does
            self.free[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.free[0] -= n
        return super().write(data)


@pytest.mark.parametrize("disk", ["tmpfs", "simulated"])
def test_a_full_disk_keeps_the_earlier_checkpoint_and_resume_continues(tiny_mnist, tmp_path, make_cfg,
                                                                       monkeypatch, small_disk, disk):
    """best.ckpt and last.ckpt are 3.3 MB each (the MLP and RMSprop's state): epoch 1 writes both, epoch 2's
    first write then finds about 1.4 MB left. Without validation both are written every epoch."""
    if disk == "tmpfs" and small_disk is None:
        pytest.skip("no tmpfs could be mounted here (needs root); the simulated full disk covers the same")
    monkeypatch.chdir(small_disk if disk == "tmpfs" else tmp_path)
    if disk == "simulated":
        FullDisk.free = [int(6.6e6)]  # two checkpoints, not three
        monkeypatch.setattr(guards, "open", FullDisk, raising=False)
    run = Path(RUN)
    overrides = tiny_overrides(tiny_mnist, run) + ["data.val_size=0"]
    with pytest.raises(WriteError) as err:
        train(make_cfg(overrides))
    message = one_line(str(err.value))
    assert re.match(rf"^the disk is full \(\d.* free\): writing checkpoints/(best|last)\.ckpt \(the earlier one kept\) "
                    rf"failed; free space, then resume: python -m mnist_lab\.train resume={RUN}$", message), message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]  # no temporary
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 19)  # the end of epoch 1: 600 images in batches of 32
    assert f"[ERROR] - {message}" in (run / "train.log").read_text()
    # space again
    if disk == "tmpfs":
        subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    else:
        monkeypatch.undo()
        monkeypatch.chdir(tmp_path)
    metrics = train(make_cfg(overrides + [f"resume={run}"]))
    assert metrics["test/acc"] > 0.5
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 38


# 4. Data problems before a run folder; every message of the README's table at most 200 characters ---------------

def test_a_data_error_leaves_no_run_folder(tiny_mnist, tmp_path, make_cfg, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_mnist, data)
    (data / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    # in-process, download on but offline: the missing file is named, no folder is made
    def offline(folder, name):
        raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

    monkeypatch.setattr(idx, "fetch", offline)
    with pytest.raises(DataError, match=r"^MNIST download failed \(Network is unreachable\): .*raw lacks "
                                        r"t10k-labels-idx1-ubyte;"):
        train(make_cfg(tiny_overrides(data, tmp_path / "run") + ["data.download=true"]))
    assert not (tmp_path / "run").exists()
    # the command line, where Hydra makes the folder first: removed again, the error in one line
    overrides = [o for o in tiny_overrides(data, tmp_path) if not o.startswith("output_dir=")]
    result = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'cli_run'}"], cwd=tmp_path, capture_output=True,
                 text=True, timeout=120)
    assert result.returncode == 1
    assert "lacks t10k-labels-idx1-ubyte" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "cli_run").exists()


def error_table_cases(tiny_mnist: Path, make_cfg, monkeypatch) -> dict[str, callable]:
    """Each README row that a function can show without training (NaN, Ctrl-C, a full disk, a failing sweep job
    and a damaged config.yaml: the tests above and in test_reliability.py)."""
    import socket
    import urllib.error

    import torch
    import torchvision.datasets.utils as tv_utils

    from mnist_lab.cmdline import check
    from mnist_lab.config import check_keys, check_launch, validate
    from mnist_lab.module import load_checkpoint as load
    from mnist_lab.predict import output_folder

    data, raw = Path("mnist"), Path("mnist/MNIST/raw")
    shutil.copytree(tiny_mnist, data)
    run = Path(RUN)
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    def no_mnist():
        monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
        idx.ensure_raw_files(Path("data"))  # the default data folder, on a first run

    def missing():
        (raw / "t10k-labels-idx1-ubyte").rename(raw / "moved")
        try:
            idx.check_raw_files(data)
        finally:
            (raw / "moved").rename(raw / "t10k-labels-idx1-ubyte")

    def damaged(change):
        def case():
            path = raw / "train-images-idx3-ubyte"
            blob = path.read_bytes()
            path.write_bytes(change(blob))
            try:
                idx.check_raw_files(data, checksums=True)
            finally:
                path.write_bytes(blob)
        return case

    def checkpoint(content):
        def case():
            torch.save(content, ckpt) if not isinstance(content, bytes) else ckpt.write_bytes(content)
            load(ckpt, model_name="convnet")
        return case

    class Code:
        def __reduce__(self):
            return (print, ("unpickled",))

    def resume_overrides():
        hydra = OmegaConf.create({"overrides": {"task": [f"resume={RUN}", "optimizer.lr=1"]}, "launcher": {},
                                  "mode": "RUN"})
        check_launch(OmegaConf.create({"resume": RUN}), hydra)

    def ddp_under_multirun():
        check(["trainer=ddp_cpu", "seed=0,1"], multirun=True)

    def predicted():
        folder = run / "predictions" / "test"
        folder.mkdir(parents=True)
        (folder / "predictions.csv").write_text("")
        output_folder(run / "export" / "model.onnx", "test", None, False)

    return {
        "no MNIST and no network": no_mnist,
        "a data file missing": missing,
        "a truncated data file": damaged(lambda b: b[:-36]),
        "a file that is not IDX": damaged(lambda b: (2049).to_bytes(4, "big") + b[4:]),
        "damaged bytes": damaged(lambda b: b[:500] + bytes([b[500] ^ 0xFF]) + b[501:]),
        "a misspelled key": lambda: check_keys(["optimizer.lrr=1"]),
        "an unknown choice": lambda: check_keys(["model=resnet"]),
        "a value that cannot work": lambda: validate(make_cfg(["optimizer.lr=-1", "output_dir=x"])),
        "resume with other overrides": resume_overrides,
        "ddp under --multirun": ddp_under_multirun,
        "a damaged checkpoint": checkpoint(b"a text file saved as .ckpt\n"),
        "a checkpoint from elsewhere": checkpoint({"w": torch.zeros(3)}),
        "a checkpoint of the other model": checkpoint({"state_dict": {}, "hyper_parameters": {"model": {"name": "mlp"}}}
                                                      ),
        "a checkpoint that holds code": checkpoint({"state_dict": {}, "x": Code()}),
        "predicting where an earlier prediction is": predicted,
    }


def test_every_error_of_the_readme_table_is_one_line_of_at_most_200_characters(tiny_mnist, tmp_path, make_cfg,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    for case, show in error_table_cases(tiny_mnist, make_cfg, monkeypatch).items():
        with pytest.raises(Exception) as err:
            show()
        assert err.type.__module__ == "mnist_lab.errors", (case, err.value)
        message = str(err.value)
        assert "\n" not in message and len(message) <= 200, (case, len(message), message)
        for advice in ("add_safe_globals", "verify_checksums=false", "weights_only=False"):
            assert advice not in message, (case, message)  # never advice that weakens a check


def test_the_readme_table_shows_no_message_over_200_characters():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("| situation | what you see |"):]
    table = table[: table.index("\n\n")]
    sweep = RUN.replace("runs", "sweeps")  # a sweep folder as a user sees it
    shown = [m.replace("<run>", RUN).replace("<sweep>", sweep)
             for row in table.splitlines()[2:] for m in re.findall(r"`([^`]{60,})`", row)]
    assert len(shown) >= 20
    for message in shown:
        assert len(message) <= 200, (len(message), message)
