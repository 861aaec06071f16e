"""A multirun over both models on generated data, read back with TensorBoard's own reader."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lab import compare
from tests.conftest import tiny_overrides

SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "time/epoch_s",
           "hp/val_acc", "hp/val_loss", "hp/test_acc", "hp/test_loss"}


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    overrides = [o for o in tiny_overrides(tiny_mnist, root) if not o.startswith("output_dir=")]
    cmd = [sys.executable, "-m", "mnist_lab.train", "-m", "model=mlp,convnet", "seed=0,1",
           "trainer.max_epochs=2", f"hydra.sweep.dir={root / 'sweep'}", *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "sweep"


def test_runs_named_by_variant(sweep):
    names = sorted(p.name for p in compare.find_runs(sweep))
    assert len(names) == 4
    assert names[0].startswith("0_mlp_") and "seed:0" in names[0] and "model" not in names[0]
    assert {n.split("_")[1] for n in names} == {"mlp", "convnet"}


def test_event_files_hold_scalars_hparams_and_images(sweep):
    for run in compare.find_runs(sweep):
        events = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
        events.Reload()
        tags = events.Tags()
        assert SCALARS <= set(tags["scalars"]), run.name
        assert len(events.Scalars("val/acc")) == 2 and len(events.Scalars("time/epoch_s")) == 2
        assert {"test/predictions", "test/confusion_matrix"} <= set(tags["images"]), run.name
        hparams = events.PluginTagToContent("hparams")
        assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams), run.name
        assert b"model.name" in hparams["_hparams_/session_start_info"]


def test_compare_table_and_png(sweep, capsys):
    assert compare.main([str(sweep)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| mlp") or line.startswith("| convnet")]
    assert len(rows) == 2, out
    mlp = next(r for r in rows if r.startswith("| mlp"))
    assert "407,050" in mlp and "| 2 |" in mlp and "±" in mlp
    assert "93,322" in next(r for r in rows if r.startswith("| convnet"))
    png = sweep / "val_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_on_an_empty_folder(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 1
    assert "no runs under" in capsys.readouterr().err
