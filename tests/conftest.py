"""Fixtures and helpers: tiny generated MNIST-format IDX files, configs composed as Hydra composes them,
the commands run as a user runs them."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_lab import config

REPO = Path(__file__).resolve().parents[1]
REAL_MNIST = Path(os.environ.get("MNIST_LAB_REAL_DATA", REPO.parent / "shared" / "mnist"))


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class c lights a 6x6 patch at a position of its own, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
        images[i, r : r + 6, col : col + 6] = 255
    return images, labels.astype(np.uint8)


def make_mnist(root: Path, n_train: int = 600, n_test: int = 200) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = make_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def make_glyph_mnist(root: Path, n_train: int = 2000, n_test: int = 300) -> Path:
    """Like make_mnist, with digits whose class is their shape (tests.rerender.glyphs), in MNIST's form."""
    from tests.rerender import glyphs

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = glyphs(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A data folder holding MNIST/raw/ with 600 train and 200 test generated images."""
    return make_mnist(tmp_path_factory.mktemp("tiny_mnist"))


@pytest.fixture
def real_mnist() -> Path:
    if not (REAL_MNIST / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {REAL_MNIST} (set MNIST_LAB_REAL_DATA to a folder holding MNIST/raw/)")
    return REAL_MNIST


def tiny_overrides(data_dir: Path, out: Path) -> list[str]:
    """A quick CPU run on generated data: 100 of the 600 images held out, 2 epochs, no progress bar."""
    return [
        f"data.data_dir={data_dir}", "data.verify_checksums=false", "data.download=false",
        "data.val_size=100", "data.batch_size=32", f"output_dir={out}", "threads=1",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
    ]


@pytest.fixture
def make_cfg():
    """make_cfg(overrides) -> the composed DictConfig, as `python -m mnist_lab.train <overrides>` sees it."""
    return config.compose


def run_cli(args: list[str], cwd: Path, timeout: int = 300, module: str = "mnist_lab.train", quiet: bool = False,
            **kwargs) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in `cwd`, as a user runs it. Output is captured as text unless stdout or
    stderr are given; quiet=True turns Python's warnings off (PYTHONWARNINGS=ignore)."""
    if "stdout" not in kwargs and "stderr" not in kwargs:
        kwargs.update(capture_output=True, text=True)
    env = {**os.environ, **({"PYTHONWARNINGS": "ignore"} if quiet else {}), **kwargs.pop("env", {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, timeout=timeout, **kwargs)


@contextlib.contextmanager
def ctrl_c_default():
    """Python's own SIGINT handler (KeyboardInterrupt) for the block, the previous one restored after: pytest
    started as a background job (`make test &`) has SIGINT ignored, which a run keeps ignoring."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def ctrl_c():
    """For a test that sends itself SIGINT: Python's default handler during the test (ctrl_c_default)."""
    with ctrl_c_default():
        yield


HOLD_LOCK = """
import sys, time
from mnist_lab.runs import Lock
Lock(sys.argv[1], "held").acquire()
print("held", flush=True)
time.sleep(120)
"""  # python -c HOLD_LOCK <lock file>: another process holding that lock until killed


def train_interrupted(make_cfg, overrides: list[str], out: Path, when, sig: int, match: str, monkeypatch) -> list[str]:
    """Train `overrides` into `out`, sending `sig` once, inside the first fast-path chunk for which
    when(runner, xs) holds; the run must stop with Interrupted matching `match`. Returns the overrides into
    `out` (add resume= to continue it)."""
    from mnist_lab.errors import Interrupted
    from mnist_lab.fastpath import ChunkRunner
    from mnist_lab.train import train

    original = ChunkRunner.__call__

    def interrupted(self, xs, ys):
        if not getattr(self, "signalled", False) and when(self, xs):
            self.signalled = True
            os.kill(os.getpid(), sig)  # arrives while the chunk runs
        return original(self, xs, ys)

    cut = [o if not o.startswith("output_dir=") else f"output_dir={out}" for o in overrides]
    with monkeypatch.context() as m, ctrl_c_default():
        m.setattr(ChunkRunner, "__call__", interrupted)
        with pytest.raises(Interrupted, match=match):
            train(make_cfg(cut))
    return cut


def fake_slurm(folder: Path, monkeypatch, answers: bool) -> None:
    """Stand-in sbatch and scontrol on PATH: a Slurm client whose controller answers, or one not configured."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {"sbatch": 'echo "slurm 22.05.8"',
               "scontrol": ('echo "Slurmctld(primary) at localhost is UP"' if answers else
                            'echo "scontrol: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host" >&2\n'
                            'echo "fatal: Could not establish a configuration source" >&2; exit 1')}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
