"""Every value a user can type is checked before anything is written, and each mistake is one line: no
traceback, none of Hydra's lines around it, a non-zero exit status, no run or sweep folder."""

from __future__ import annotations

import pytest
import torch

from mnist_lab.cmdline import prepare_argv, split_args
from mnist_lab.errors import ConfigError, NothingToDo
from tests.conftest import fake_slurm, run_cli, tiny_overrides


def one_line(message: str) -> str:
    assert "\n" not in message and len(message) <= 200, (len(message), message)
    return message


@pytest.mark.parametrize("override, says", [
    ("seed=-1", "seed=-1 is invalid: seeds go from 0 to 4294967295"),
    ("seed=1099511627776", "seed=1099511627776 is invalid"),
    ("trainer.limit_train_batches=0", "trainer.limit_train_batches=0 is invalid: give a number of batches >= 1"),
    ("trainer.limit_val_batches=1.5", "trainer.limit_val_batches=1.5 is invalid"),
    ("trainer.accelerator=tpu", "trainer.accelerator=tpu needs torch_xla"),
    ("trainer.accelerator=quantum", "trainer.accelerator=quantum is invalid: choose one of auto, cpu, gpu"),
    ("trainer.precision=banana", "trainer.precision=banana is invalid: choose one of"),
    ("trainer.devices=0", "trainer.devices=0 is invalid"),
    ("optimizer.lr=inf", "optimizer.lr=inf is invalid: the learning rate must be a number > 0"),
    ("optimizer.lr=nan", "optimizer.lr=nan is invalid"),
    ("threads=abc", "threads=abc is invalid: Value 'abc' of type 'str' could not be converted to Integer"),
    ("optimizer.lr=banana", "optimizer.lr=banana is invalid: Value 'banana'"),
    ("seed=[1,", "cannot read 'seed=[1,' as an override"),
])
def test_a_value_that_cannot_work_is_one_line_before_hydra_starts(override, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        prepare_argv(["train", override, "data.download=false"])
    assert one_line(str(err.value)).startswith(says), str(err.value)
    assert not any(tmp_path.iterdir())


def test_a_space_after_the_equals_sign_is_named():
    with pytest.raises(ConfigError, match=r"a space after '=' splits one in two; write optimizer.lr=0.01"):
        prepare_argv(["train", "optimizer.lr=", "0.01"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_without_a_gpu_is_one_line_here_and_left_to_the_job_under_slurm(tiny_mnist, monkeypatch,
                                                                                       tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.accelerator=gpu: this machine has no CUDA GPU; use trainer=cpu"):
        prepare_argv(["train", "trainer=gpu"])
    fake_slurm(tmp_path, monkeypatch, answers=True)  # a login node: the job's node has the GPUs
    data = [f"data.data_dir={tiny_mnist}", "data.verify_checksums=false", "data.val_size=100"]
    prepare_argv(["train", "-m", "hydra/launcher=slurm", "trainer=gpu", "seed=0,1", *data])


def test_flags_keep_their_values_wherever_they_stand():
    assert split_args(["model=convnet", "--cfg", "job", "seed=1"]) == (["--cfg", "job"], ["model=convnet", "seed=1"])
    assert split_args(["--info", "defaults", "-m", "seed=0,1"]) == (["--info", "defaults", "-m"], ["seed=0,1"])
    assert prepare_argv(["train", "model=convnet", "--cfg", "job"]) == ["train", "--cfg", "job", "model=convnet"]


def test_a_slurm_that_does_not_answer_is_one_line_before_a_sweep_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fake_slurm(tmp_path, monkeypatch, answers=False)
    with pytest.raises(ConfigError) as err:
        prepare_argv(["train", "-m", "hydra/launcher=slurm", "trainer=cpu", "seed=0,1"])
    assert one_line(str(err.value)).startswith("hydra/launcher=slurm: Slurm does not answer (scontrol ping: fatal: "
                                               "Could not establish a configuration source)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"Slurm's sbatch or scontrol is not on PATH; run this on a Slurm login node"):
        prepare_argv(["train", "-m", "hydra/launcher=slurm", "trainer=cpu", "seed=0,1"])


def test_the_commands_line_is_the_error_alone(tiny_mnist, tmp_path):
    """Through the real command: one line on stderr, exit status 1, no run folder, for a mistake found before
    Hydra starts and one found inside the run (a missing data file)."""
    for args in (["threads=abc"], ["seed=-1"], ["data.data_dir=nowhere", "data.download=false"]):
        result = run_cli(args, cwd=tmp_path, timeout=300, quiet=True)
        assert result.returncode == 1, (args, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr[-2000:])
        one_line(result.stderr.strip())
        assert "Error executing job" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
        assert not (tmp_path / "outputs").exists(), args


def test_cfg_job_after_the_overrides(tmp_path):
    result = run_cli(["model=convnet", "--cfg", "job"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0 and "name: convnet" in result.stdout, result.stderr[-2000:]


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tiny_mnist, tmp_path, make_cfg):
    from mnist_lab.train import train

    run = tmp_path / "run"
    first = train(make_cfg(tiny_overrides(tiny_mnist, run) + ["trainer.max_epochs=1"]))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = run_cli([f"resume={run}"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    tests = "  ".join(f"{k}={first[k]:.4f}" for k in sorted(first))
    assert one_line(result.stdout.strip()) == (f"{run.relative_to(tmp_path)} finished already ({tests}): nothing to "
                                               "resume, nothing changed; start a new run to train again")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    with pytest.raises(NothingToDo):
        prepare_argv(["train", f"resume={run}"])
    assert train(make_cfg([f"resume={run}"])) == pytest.approx(first)  # train() from Python returns its metrics
    assert (run / "result.yaml").read_bytes() == before[run / "result.yaml"]


def test_an_unreadable_data_folder_is_one_line(tiny_mnist, tmp_path, monkeypatch):
    """Tests run as root, who reads everything: the refusal is simulated where the data check opens a file."""
    import shutil
    from pathlib import Path

    from mnist_lab import idx
    from mnist_lab.errors import DataError

    shutil.copytree(tiny_mnist, tmp_path / "data")  # the default data folder, as a user has it
    monkeypatch.chdir(tmp_path)
    real_open = Path.open

    def refused(self, *args, **kwargs):
        if "MNIST" in str(self):
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(DataError) as err:
        idx.ensure_raw_files("data", download=False, checksums=False)
    assert one_line(str(err.value)) == ("data/MNIST/raw/train-images-idx3-ubyte cannot be read: permission denied; "
                                        "give this user read access to data/MNIST/raw (chmod -R a+rX), or set "
                                        "data.data_dir= to a readable copy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
