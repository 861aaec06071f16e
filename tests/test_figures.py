"""What a reader looks at: explore's numbers and samples, run figures, activations. PNGs checked by size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_lab.activations import activations
from mnist_lab.config import compose
from mnist_lab.errors import CheckpointError
from mnist_lab.explore import describe, explore, report
from mnist_lab.train import train
from tests.conftest import make_digits, tiny_overrides


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_explore_numbers_equal_the_data(tiny_mnist, tmp_path):
    result = explore(str(tiny_mnist), tmp_path, verify_checksums=False)
    train, test = result["stats"]["train"], result["stats"]["test"]
    images, labels = make_digits(600, seed=1)  # what conftest wrote for the training split
    assert train["shape"] == (600, 28, 28) and test["shape"] == (200, 28, 28)
    assert train["dtype"] == "uint8" and (train["min"], train["max"]) == (int(images.min()), int(images.max()))
    assert train["counts"] == np.bincount(labels, minlength=10).tolist() and sum(test["counts"]) == 200
    assert png_size(result["png"]) == (880, 690)
    assert "lecun1998gradient" in result["bib"].read_text()
    assert "(sum 600)" in report(result["stats"])


@pytest.mark.real_data
def test_explore_real_mnist(real_mnist):
    stats = describe(str(real_mnist))
    assert stats["train"]["shape"] == (60_000, 28, 28) and stats["test"]["shape"] == (10_000, 28, 28)
    assert stats["train"]["dtype"] == "uint8" and (stats["train"]["min"], stats["train"]["max"]) == (0, 255)
    assert sum(stats["train"]["counts"]) == 60_000 and sum(stats["test"]["counts"]) == 10_000
    assert stats["test"]["counts"][1] == 1_135  # the well-known count of ones in the test set


@pytest.fixture(scope="module")
def convnet_run(tiny_mnist, tmp_path_factory):

    out = tmp_path_factory.mktemp("convnet_run")
    train(compose(tiny_overrides(tiny_mnist, out) + ["model=convnet"]))
    return out


def test_run_folder_holds_its_figures(convnet_run):
    assert png_size(convnet_run / "history.png") == (900, 380)
    assert png_size(convnet_run / "per_class.png") == (700, 380)
    assert png_size(convnet_run / "confusion_matrix.png") == (600, 600)
    assert png_size(convnet_run / "mistakes.png")[0] == 880
    assert "Total params: 93,322" in (convnet_run / "summary.txt").read_text()


def test_figures_drawn_again_on_demand(convnet_run, tmp_path, capsys):
    import shutil

    from mnist_lab import figures

    sweep = tmp_path / "sweep"
    shutil.copytree(convnet_run, sweep / "0_convnet")
    for name in ("history", "per_class", "confusion_matrix", "mistakes"):
        (sweep / "0_convnet" / f"{name}.png").unlink()
    assert figures.main([str(sweep)]) == 0  # a sweep folder: every finished run in it
    assert png_size(sweep / "0_convnet" / "mistakes.png")[0] == 880
    assert png_size(sweep / "0_convnet" / "history.png") == (900, 380)
    assert figures.main([str(tmp_path / "nothing")]) == 1 and "no finished runs" in capsys.readouterr().err


def test_a_redraw_logs_no_images_again_and_clears_what_a_killed_drawing_left(convnet_run, tmp_path):
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mnist_lab import figures

    run = tmp_path / "run"
    shutil.copytree(convnet_run, run)

    def logged_images() -> int:
        events = EventAccumulator(str(run), size_guidance={"images": 0})
        events.Reload()
        return len(events.Images("test/predictions"))

    before = logged_images()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".mistakes.png.tmp-{dead.pid}"  # a drawing killed mid-write (SIGKILL)
    stale.write_bytes(b"\x89PNG half")
    (run / "history.png").unlink()
    assert figures.main([str(run)]) == 0
    assert png_size(run / "history.png") == (900, 380)
    assert not stale.exists()
    assert logged_images() == before == 1


def test_activations_png_and_tensorboard(convnet_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    png = activations(str(convnet_run), index=3)
    assert png == convnet_run / "activations_3.png"
    width, height = png_size(png)
    assert width == 1120 and height > 500
    events = EventAccumulator(str(convnet_run), size_guidance={"images": 0})
    events.Reload()
    assert "activations/test_3" in events.Tags()["images"]


def test_activations_need_a_convnet(tiny_mnist, tmp_path, make_cfg):
    train(make_cfg(tiny_overrides(tiny_mnist, tmp_path) + ["trainer.max_epochs=1"]))
    with pytest.raises(CheckpointError, match="holds a mlp, which has no conv layers"):
        activations(str(tmp_path))


HELPERS = """
import os, time
from mnist_lab import figures
pool = figures.pool()
pool.submit(print, "a worker's line").result()
worker = pool.submit(os.getpid).result()
print(worker, os.getpgid(worker), flush=True)
time.sleep(60)
"""


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc (Linux)")
def test_drawing_workers_are_quiet_and_end_with_their_sweep():
    sweep = subprocess.Popen([sys.executable, "-c", HELPERS], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        worker, group = map(int, sweep.stdout.readline().split())
        assert group == worker != os.getpgid(sweep.pid)  # a group of its own: a terminal's Ctrl-C is not for it
        os.kill(sweep.pid, signal.SIGKILL)
        out, err = sweep.communicate(timeout=30)
    finally:
        sweep.kill()
    deadline = time.time() + 10
    while running(worker) and time.time() < deadline:
        time.sleep(0.05)
    assert not running(worker)  # ended with the sweep's process
    assert "a worker's line" not in out + err
