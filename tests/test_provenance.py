"""Provenance in every run folder, and `python -m mnist_lab.reproduce` on it."""

from __future__ import annotations

import hashlib
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from mnist_lab import provenance, reproduce
from mnist_lab.export import model_card
from mnist_lab.idx import RAW_FILES, raw_folder
from mnist_lab.module import load_net
from mnist_lab.train import train
from tests.conftest import tiny_overrides


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def dirty_checkout(tmp_path) -> tuple[Path, Path, str]:
    """A git checkout with a package folder: committed, then one file changed and one added untracked."""
    repo = tmp_path / "checkout"
    package = repo / "src" / "package"
    package.mkdir(parents=True)
    (package / "code.py").write_text("x = 1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    (package / "code.py").write_text("x = 2\n")
    (package / "new.py").write_text("y = 3\n")
    return repo, package, git(repo, "rev-parse", "HEAD").strip()


def test_run_from_a_dirty_checkout_records_it_and_reproduces(tiny_mnist, tmp_path, make_cfg, monkeypatch,
                                                             dirty_checkout, capsys):
    repo, package, commit = dirty_checkout
    monkeypatch.setattr(provenance, "SOURCE", package)  # as if mnist_lab ran from this checkout
    run = tmp_path / "run"
    # 1 epoch at a small learning rate: metrics that are not trivially 1.0 or 0.0
    train(make_cfg(tiny_overrides(tiny_mnist, run) + ["trainer.max_epochs=1", "optimizer.lr=1e-5"]))

    record = yaml.safe_load((run / "provenance.yaml").read_text())
    assert record["git"]["commit"] == commit and record["git"]["dirty"] is True
    assert record["git"]["changed"] == ["src/package/code.py"]
    assert record["git"]["untracked"] == ["src/package/new.py"]
    assert record["git"]["diff"] == "provenance.diff"
    # the saved diff turns the commit back into the tree that ran
    git(repo, "checkout", "-q", "--", ".")
    (package / "new.py").unlink()
    git(repo, "apply", str(run / "provenance.diff"))
    assert (package / "code.py").read_text() == "x = 2\n" and (package / "new.py").read_text() == "y = 3\n"

    assert set(record["versions"]) == {"python", "torch", "lightning", "hydra", "torchmetrics", "numpy", "mnist_lab"}
    assert record["versions"]["torch"] == version("torch") and record["versions"]["lightning"] == version("lightning")
    sha = {name: hashlib.sha256((raw_folder(tiny_mnist) / name).read_bytes()).hexdigest() for name in RAW_FILES}
    assert record["data"]["sha256"] == sha
    assert record["host"]["torch_threads"] == 1 and record["host"]["device"] == "cpu" and record["host"]["cpu"]
    assert record["command"]["cwd"] and "slurm" not in record  # no Slurm variables outside a Slurm job

    # summarised in every checkpoint, and from there in export's model.yaml
    net, ckpt = load_net(run / "checkpoints" / "best.ckpt")
    summary = ckpt["hyper_parameters"]["provenance"]
    assert summary["git_commit"] == commit and summary["git_dirty"] is True
    assert summary["versions"] == record["versions"]
    assert model_card(net, run / "checkpoints" / "best.ckpt", ckpt, {}, {})["provenance"] == summary

    # reproduce: the same metrics to the last bit on this CPU, exit status 0
    assert reproduce.main([str(run), "--out", str(tmp_path / "again")]) == 0
    out = capsys.readouterr().out
    assert "expected: identical (CPU" in out and "reproduced: 6 metrics identical" in out
    table = [line for line in out.splitlines() if line.startswith(("train/", "val/", "test/"))]
    assert len(table) == 6 and all(line.endswith("identical") for line in table), out
    result = yaml.safe_load((run / "result.yaml").read_text())
    assert 0 < result["metrics"]["test/acc"] < 1

    # a tampered result no longer reproduces: exit status 1, naming the metric
    result["metrics"]["test/acc"] += 0.005
    (run / "result.yaml").write_text(yaml.safe_dump(result))
    assert reproduce.main([str(run), "--out", str(tmp_path / "again2")]) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced: test/acc differs" in out
    row = next(line for line in out.splitlines() if line.startswith("test/acc"))
    assert row.endswith("differs (expected identical)")


def test_outside_a_git_checkout_says_so(tmp_path):
    state, diff = provenance.git_state(tmp_path)
    assert "not a git checkout" in state["error"] and diff == ""
    record, _ = provenance.collect()
    assert provenance.summary({**record, "git": state})["git"].startswith("not a git checkout")


def test_a_copy_inside_another_checkout_is_not_its_code(dirty_checkout):
    repo, _, _ = dirty_checkout
    copy = repo / "venv" / "site-packages" / "package"  # untracked, as an installed copy in a .venv would be
    copy.mkdir(parents=True)
    state, _ = provenance.git_state(copy)
    assert "does not track" in state["error"] and "commit" not in state


def test_tolerance_where_identical_is_not_expected():
    old = {"test/acc": 0.9800, "test/loss": 0.0700}
    rows = reproduce.verdicts(old, {"test/acc": 0.9780, "test/loss": 0.0740}, exact=False)
    assert [ok for *_, ok in rows] == [True, True]
    rows = reproduce.verdicts(old, {"test/acc": 0.9700, "test/loss": 0.0800}, exact=False)
    assert [ok for *_, ok in rows] == [False, False] and "beyond tolerance" in rows[0][3]
    assert not reproduce.verdicts(old, {"test/acc": 0.98000001, "test/loss": 0.07}, exact=True)[0][4]
