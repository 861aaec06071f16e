"""MNISTDataModule on tiny generated IDX files: shapes, dtypes, ranges, splits, errors."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from mnist_lab import idx
from mnist_lab.data import MNISTDataModule, TensorBatches
from mnist_lab.errors import DataError
from mnist_lab.idx import RAW_FILES, check_raw_files


def _dm(root, **kw):
    kw = {"val_size": 100, "batch_size": 32, "download": False, "verify_checksums": False, **kw}
    dm = MNISTDataModule(str(root), **kw)
    dm.prepare_data()
    dm.setup()
    return dm


def test_shapes_dtypes_and_range(tiny_mnist):
    dm = _dm(tiny_mnist)
    assert dm.train_x.shape == (500, 784) and dm.val_x.shape == (100, 784) and dm.test_x.shape == (200, 784)
    assert dm.train_x.dtype == torch.float32 and dm.train_y.dtype == torch.int64
    raw = _dm(tiny_mnist, normalize=False)
    assert raw.train_x.min() >= 0 and raw.train_x.max() <= 1 and raw.train_x.max() == 1
    # normalized: (x/255 - 0.1307) / 0.3081
    assert torch.allclose(dm.train_x, (raw.train_x - 0.1307) / 0.3081, atol=1e-6)
    assert set(dm.train_y.tolist()) <= set(range(10))


def test_input_shape_from_model(tiny_mnist):
    dm = _dm(tiny_mnist, input_shape=(1, 28, 28))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and y.shape == (32,)


def test_split_seeded_reproducible_disjoint(tiny_mnist):
    a, b, c = _dm(tiny_mnist, seed=0), _dm(tiny_mnist, seed=0), _dm(tiny_mnist, seed=1)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.val_x, c.val_x)
    # no image is both in train and val (generated images are all distinct)
    train = {tuple(r.tolist()) for r in a.train_x[:, ::7]}
    assert not any(tuple(r.tolist()) in train for r in a.val_x[:, ::7])
    assert len(a.train_y) + len(a.val_y) == 600


def test_val_size_zero_trains_on_all(tiny_mnist):
    dm = _dm(tiny_mnist, val_size=0)
    assert len(dm.train_y) == 600 and dm.val_dataloader() == []


def test_batches_cover_epoch_once_and_reshuffle():
    x, y = torch.arange(100).float()[:, None], torch.arange(100)
    epoch = [0]
    batches = TensorBatches(x, y, 32, shuffle=True, seed=3, epoch=lambda: epoch[0])
    first = torch.cat([b[1] for b in batches])
    assert len(batches) == 4 and sorted(first.tolist()) == list(range(100))
    assert torch.equal(first, torch.cat([b[1] for b in batches]))  # same epoch, same order
    epoch[0] = 1
    assert not torch.equal(first, torch.cat([b[1] for b in batches]))


def test_missing_files_offline_names_folder_and_files(tiny_mnist, tmp_path):
    with pytest.raises(DataError) as err:
        check_raw_files(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "all four, {train,t10k}-{images-idx3,labels-idx1}-ubyte" in msg
    assert "data.data_dir" in msg and "\n" not in msg
    shutil.copytree(tiny_mnist, tmp_path / "some")
    (tmp_path / "some" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"raw lacks t10k-labels-idx1-ubyte; place them there"):
        check_raw_files(tmp_path / "some")


def test_download_names_the_missing_file_and_why(tiny_mnist, tmp_path, monkeypatch):
    """Only the missing file is fetched; offline, the error names it and the reason (not a file that is there)."""
    import socket
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    asked = []

    def offline(url, **kwargs):
        asked.append(url.rsplit("/", 1)[1])
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    shutil.copytree(tiny_mnist, tmp_path / "data")
    (tmp_path / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    dm = MNISTDataModule(str(tmp_path / "data"), download=True, verify_checksums=False)
    with pytest.raises(DataError, match=r"^MNIST download failed \(no network: name lookup failed\): .*/MNIST/raw "
                                        r"lacks t10k-labels-idx1-ubyte; place them there") as err:
        dm.prepare_data()
    assert set(asked) == {"t10k-labels-idx1-ubyte.gz"}  # each mirror, for the one missing file
    assert "train-images" not in str(err.value)
    assert not list((tmp_path / "data" / "MNIST" / "raw").glob(".download-*"))


@pytest.fixture
def broken(tiny_mnist, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_mnist, root)
    return root, root / "MNIST" / "raw"


def test_truncated_file(broken):
    root, raw = broken
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated.*header promises"):
        check_raw_files(root, checksums=False)


def test_wrong_magic(broken):
    root, raw = broken
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an MNIST IDX file: magic number 2051, "
                                        "expected 2049"):
        check_raw_files(root, checksums=False)


def test_corrupted_bytes_fail_checksum(broken, monkeypatch):
    root, raw = broken
    # the generated files' own digests stand in for the official ones
    digests = {name: (m, s, hashlib.sha256((raw / name).read_bytes()).hexdigest())
               for name, (m, s, _) in RAW_FILES.items()}
    monkeypatch.setattr(idx, "RAW_FILES", digests)
    check_raw_files(root, checksums=True)
    path = raw / "t10k-images-idx3-ubyte"
    blob = bytearray(path.read_bytes())
    blob[500] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is corrupted: SHA-256") as err:
        check_raw_files(root, checksums=True)
    assert "verify_checksums" not in str(err.value)  # never advice to switch the check off
