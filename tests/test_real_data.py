"""On the real MNIST (../shared/mnist or MNIST_LAB_REAL_DATA); skipped with a reason where absent."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mnist_lab.config import compose
from mnist_lab.data import MNISTDataModule, check_raw_files
from mnist_lab.train import train

pytestmark = pytest.mark.real_data


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """An MLP trained one epoch on the real MNIST: its run folder and test metrics."""
    from tests.conftest import REAL_MNIST

    if not (REAL_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {REAL_MNIST} (set MNIST_LAB_REAL_DATA to a folder holding MNIST/raw/)")
    out = tmp_path_factory.mktemp("real_run")
    overrides = [f"data.data_dir={REAL_MNIST}", f"output_dir={out}", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", "threads=2"]
    metrics = train(compose(overrides))
    return out, metrics


def test_real_files_pass_checksums(real_mnist):
    check_raw_files(real_mnist, checksums=True)
    dm = MNISTDataModule(str(real_mnist), download=False)
    dm.setup()
    assert (len(dm.train_y), len(dm.val_y), len(dm.test_y)) == (55_000, 5_000, 10_000)


def test_one_epoch_reaches_95_percent(one_epoch):
    assert one_epoch[1]["test/acc"] >= 0.95


def test_every_mnist_test_digit_passes_preparation_unchanged(real_mnist):
    from mnist_lab.idx import read_idx
    from mnist_lab.prepare import prepare

    images = read_idx(real_mnist / "MNIST" / "raw" / "t10k-images-idx3-ubyte")
    for image in images:
        prepared = prepare(image)
        assert prepared.steps == ["already MNIST-like: unchanged"] and np.array_equal(prepared.pixels, image)


def test_rerendered_test_digits_within_2_points(one_epoch, real_mnist, tmp_path):
    """500 real test digits (the first), re-rendered as a person's images: predict's accuracy on them
    within 2 points of the same model's on the originals."""
    from mnist_lab.export import export
    from mnist_lab.idx import read_idx
    from mnist_lab.predict import predict
    from tests.rerender import write_rerendered

    run, _ = one_epoch
    export(run, formats=["onnx"], check=False)
    raw = real_mnist / "MNIST" / "raw"
    images, labels = read_idx(raw / "t10k-images-idx3-ubyte")[:500], read_idx(raw / "t10k-labels-idx1-ubyte")[:500]
    np.save(tmp_path / "originals.npy", images)
    write_rerendered(images, labels, tmp_path / "scans", seed=0)

    def accuracy(source: str) -> float:
        result = predict(str(run), source=source, out=str(tmp_path / "out"), overwrite=True)
        with open(result["csv"], newline="") as f:
            return float(np.mean([int(r["predicted"]) == y for r, y in zip(csv.DictReader(f), labels, strict=True)]))

    original, rerendered = accuracy(str(tmp_path / "originals.npy")), accuracy(str(tmp_path / "scans"))
    assert original >= 0.95 and abs(rerendered - original) <= 0.02, (original, rerendered)


def test_bench_times_what_a_run_pays_besides_its_epochs(real_mnist):
    """scripts/bench.py --fixed goes through train() with its own hook on build_run: it follows build_run's
    signature."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "scripts" / "bench.py"), "--fixed", "--repeats", "1",
                           "--data", str(real_mnist), "--threads", "2"], cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "a 1-epoch MLP run (" in done.stdout and "setup " in done.stdout, done.stdout[-2000:]
