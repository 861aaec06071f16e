"""Export: each format agrees with eager; files load without mnist_lab; predict runs without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mnist_lab.config import compose
from mnist_lab.errors import CheckpointError
from mnist_lab.export import Deployable, export, load_net
from mnist_lab.predict import predict
from mnist_lab.train import train
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module", params=["mlp", "convnet"])
def exported(request, tiny_mnist, tmp_path_factory):

    out = tmp_path_factory.mktemp(request.param)
    overrides = tiny_overrides(tiny_mnist, out) + [f"model={request.param}", "trainer.max_epochs=1", "export=true"]
    train(compose(overrides))
    return out


def test_every_format_written_and_checked(exported, capsys):
    files = export(exported, data_dir=None)  # the run's own data folder: the generated test set
    assert {p.name for p in files.values()} == {"model.onnx", "model.pt2", "model.torchscript.pt",
                                               "weights.safetensors", "model.yaml"}
    out = capsys.readouterr().out
    for name in ("onnx", "pt2", "torchscript", "weights"):
        assert f"check {name}" in out and "0 disagreeing predictions" in out
    import yaml

    card = yaml.safe_load(files["yaml"].read_text())
    assert card["input"]["shape"] == ["N", 28, 28] and card["check"]["onnx"]["disagreements"] == 0
    assert card["check"]["onnx"]["max_abs_diff"] <= 1e-4
    assert card["epoch"] == 1  # trainer.max_epochs=1: the first epoch, counted as the run's log counts it
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files.values()}
    assert len(set(modes.values())) == 1, modes  # weights.safetensors as readable as the others


def test_graphs_take_raw_pixels_and_return_probabilities(exported):
    net, _ = load_net(exported / "checkpoints" / "best.ckpt")
    model = Deployable(net)
    pixels = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        p = model(pixels)
        assert torch.allclose(p.sum(1), torch.ones(5), atol=1e-5)
        assert torch.allclose(model(pixels.float().unsqueeze(1)), p)  # (N, 1, 28, 28) too


def run_isolated(code: str, cwd) -> subprocess.CompletedProcess:
    """A fresh interpreter in which `import mnist_lab` fails."""
    guard = textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "mnist_lab":
                    raise ImportError("mnist_lab is not importable here")
        sys.meta_path.insert(0, _Block())
    """)
    return subprocess.run([sys.executable, "-I", "-c", guard + textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_torchscript_and_pt2_load_without_mnist_lab(exported, tmp_path):  # written by train(export=true)
    code = f"""
        import warnings, torch
        try:
            import mnist_lab
            raise SystemExit("mnist_lab was importable")
        except ImportError:
            pass
        x = torch.rand(3, 28, 28) * 255
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ts = torch.jit.load(r"{exported / 'export' / 'model.torchscript.pt'}")
        ep = torch.export.load(r"{exported / 'export' / 'model.pt2'}").module()
        a, b = ts(x), ep(x)
        assert a.shape == (3, 10) and torch.allclose(a, b, atol=1e-5), (a, b)
        print("ok", ep(x[:1]).shape)
    """
    result = run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "ok torch.Size([1, 10])" in result.stdout


def test_onnx_needs_only_onnxruntime_numpy_pillow(exported, tmp_path):
    code = f"""
        import sys
        import numpy as np, onnxruntime as ort
        from PIL import Image
        s = ort.InferenceSession(r"{exported / 'export' / 'model.onnx'}", providers=["CPUExecutionProvider"])
        img = np.asarray(Image.new("L", (28, 28)), dtype=np.float32)[None]
        p = s.run(["probabilities"], {{"pixels": img}})[0]
        assert p.shape == (1, 10) and abs(p.sum() - 1) < 1e-5
        assert "torch" not in sys.modules and "lightning" not in sys.modules
        print("ok")
    """
    result = run_isolated(code, tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]


def test_predict_imports_neither_torch_nor_lightning(exported, tmp_path):
    code = f"""
        import runpy, sys
        sys.argv = ["predict", r"onnx={exported}", r"out={tmp_path}"]
        runpy.run_module("mnist_lab.predict", run_name="__main__")
        assert "torch" not in sys.modules and "lightning" not in sys.modules, "torch was imported"
        print("no torch")
    """
    env = {k: v for k, v in os.environ.items() if k != "MNIST_LAB_DATA_DIR"}  # the run's own data folder
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-1500:]
    assert "no torch" in result.stdout and "predicted 200 images, accuracy" in result.stdout
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0] == "item,predicted,top1,p1,top2,p2,top3,p3,true,note" and len(rows) == 201
    assert (tmp_path / "predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_folder_with_bad_files(exported, tmp_path, caplog):
    from PIL import Image

    from tests.rerender import glyphs

    folder = tmp_path / "digits"
    folder.mkdir()
    Image.fromarray(glyphs(1, seed=0)[0][0]).save(folder / "a_ok.png")
    Image.fromarray(np.full((56, 40), 255, np.uint8)).save(folder / "b_big_white.png")
    (folder / "c_broken.png").write_bytes(b"not an image at all")
    np.save(folder / "d_array.npy", np.zeros((1, 28, 28), np.uint8))
    (folder / "e_notes.txt").write_text("not a digit")
    (folder / ".hidden.png").write_bytes(b"")
    with caplog.at_level("INFO"):
        result = predict(str(exported), source=str(folder), out=str(tmp_path / "out"))
    assert (result["n"], result["skipped"]) == (1, 2)
    log = caplog.text
    skipped = [line for line in log.splitlines() if "skipped 2 other files" in line]
    assert len(skipped) == 1 and skipped[0].endswith(": d_array.npy, e_notes.txt; predict a .npy as source=<file>.npy")
    assert "a_ok.png: already MNIST-like: unchanged" in log
    assert "b_big_white.png: not predicted, blank: no digit found" in log
    assert "c_broken.png: not predicted, cannot read it as an image" in log
    rows = [r.split(",") for r in (tmp_path / "out" / "predictions.csv").read_text().splitlines()[1:]]
    assert [r[0] for r in rows] == ["a_ok.png", "b_big_white.png", "c_broken.png"]
    assert rows[0][1] != "" and rows[1][1] == rows[2][1] == ""


def test_reexport_with_fewer_formats_leaves_no_stale_files(exported, tmp_path, capsys):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(exported / "checkpoints", run / "checkpoints")
    export(run, formats=["pt2", "weights"], check=False)
    files = export(run, formats=["weights"], check=False)
    assert sorted(p.name for p in (run / "export").iterdir()) == ["model.yaml", "weights.safetensors"]
    assert yaml.safe_load(files["yaml"].read_text())["files"] == {"weights": "weights.safetensors"}
    assert f"removed {run / 'export' / 'model.pt2'}: an earlier export's, not in formats=['weights']" in \
        capsys.readouterr().out


def test_predict_npy(exported, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).integers(0, 256, (7, 1, 28, 28)).astype(np.uint8))
    assert predict(str(exported), source=str(tmp_path / "x.npy"), out=str(tmp_path / "o"))["n"] == 7


def test_export_rejects_truncated_and_foreign_checkpoints(exported, tmp_path):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes((exported / "checkpoints" / "best.ckpt").read_bytes()[:3000])
    with pytest.raises(CheckpointError, match="truncated, damaged or not a checkpoint"):
        export(cut)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {"lr": 1}}, foreign)
    with pytest.raises(CheckpointError, match="not an mnist_lab checkpoint"):
        export(foreign)
    with pytest.raises(CheckpointError, match="holds no checkpoints/best.ckpt"):
        export(tmp_path)


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "mnist_lab.predict", f"onnx={tmp_path}"], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1 and f"no ONNX model at {tmp_path}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_check_leaves_no_files(exported, monkeypatch):
    import mnist_lab.export as export_module
    from mnist_lab.errors import ExportCheckError

    folder = exported / "export"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    monkeypatch.setattr(export_module, "TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(ExportCheckError, match="disagrees with the eager model"):
        export(exported)
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert after == before  # the earlier, checked files are untouched; no staging folder is left


def test_export_keeps_the_runs_normalization(tiny_mnist, tmp_path, make_cfg):
    # experiment=keras_seed trains on x / 255 without standardizing: the export must do the same
    out = tmp_path / "raw"
    metrics = train(make_cfg(tiny_overrides(tiny_mnist, out) + ["data.normalize=false", "trainer.max_epochs=1",
                                                                "optimizer.lr=2e-6"]))
    assert 0 < metrics["test/acc"] < 1  # a lr this small leaves it far from perfect: a real comparison
    files = export(out)
    import yaml

    card = yaml.safe_load(files["yaml"].read_text())
    assert card["preprocessing_inside"].startswith("x / 255; reshaped")
    for name in ("onnx", "pt2", "torchscript", "weights"):
        assert card["check"][name]["test_acc"] == pytest.approx(metrics["test/acc"], abs=1e-6), name
