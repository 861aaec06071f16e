"""The commands beside train: each one's --help is about itself, a missing argument is one line with an example."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_lab import usage
from mnist_lab.config import CONF_DIR

KEY_VALUE = {"export": "checkpoint", "predict": "onnx", "activations": "checkpoint", "explore": None}


def run(command: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([sys.executable, "-m", f"mnist_lab.{command}", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=180)


def run_here(command: str, *args: str, cwd: Path, monkeypatch) -> int | str | None:
    """`python -m mnist_lab.<command> args` in this process (torch is loaded already): its exit code or message."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [command, *args])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        runpy.run_module(f"mnist_lab.{command}", run_name="__main__")
    except SystemExit as stop:
        return stop.code
    return None


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", list(KEY_VALUE))
def test_key_value_commands_help_is_about_themselves(command, tmp_path, monkeypatch, capsys):
    assert run_here(command, "--help", cwd=tmp_path, monkeypatch=monkeypatch) in (0, None)
    out = capsys.readouterr().out
    assert out.startswith(f"python -m mnist_lab.{command} [key=value ...]\n")
    assert usage.docstring(command).splitlines()[0] in out  # what it does, reads and writes
    keys = usage.yaml_keys(Path(CONF_DIR) / f"{command}.yaml")
    listed = {line.split()[0]: line for line in out.split("Keys (key=value")[1].splitlines()[1:] if line.strip()}
    for key, (_, meaning) in keys.items():
        assert key in listed and listed[key].rstrip().endswith(meaning), key  # each key with its meaning
    assert "trainer" not in listed and "== Config groups ==" not in out  # not training's groups, not Hydra's help
    if KEY_VALUE[command]:
        assert "(required)" in listed[KEY_VALUE[command]]
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", [c for c, key in KEY_VALUE.items() if key])
def test_a_missing_required_key_is_one_line_with_an_example(command, tmp_path, monkeypatch):
    key = KEY_VALUE[command]
    if command == "predict":  # the whole command line once, in a process of its own (no torch: quick)
        result = run(command, cwd=tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        line = result.stderr
    else:
        line = run_here(command, cwd=tmp_path, monkeypatch=monkeypatch)  # sys.exit(line): exit status 1
    assert isinstance(line, str) and len(line.strip().splitlines()) == 1 and len(line.strip()) <= 200, line
    assert line.startswith(f"python -m mnist_lab.{command} needs {key}=: ")
    assert f"; e.g. python -m mnist_lab.{command} {key}=outputs/runs/<time>" in line
    assert not list(tmp_path.iterdir())


def test_required_keys_given_in_any_form_pass_the_check():
    usage.check_required("export", ["export", "checkpoint=x"])
    usage.check_required("export", ["export", "++checkpoint=x", "check=false"])
    usage.check_required("export", ["export", "--cfg", "job"])  # shows the config, ??? included
    usage.check_required("export", ["export", "formats=[onnx", "--help"])
    with pytest.raises(usage.ConfigError, match="needs checkpoint=: a run folder"):
        usage.check_required("export", ["export", "check=false"])


@pytest.mark.parametrize("command, missing, example", [
    ("compare", "sweep", "python -m mnist_lab.compare outputs/sweeps/<time>"),
    ("figures", "RUN_OR_SWEEP", "python -m mnist_lab.figures outputs/runs/<time>"),
    ("reproduce", "run", "python -m mnist_lab.reproduce outputs/runs/<time>"),
])
def test_flag_commands_help_and_missing_argument(command, missing, example, capsys):
    import importlib

    main = importlib.import_module(f"mnist_lab.{command}").main
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith(f"usage: python -m mnist_lab.{command} ")
    assert usage.docstring(command).splitlines()[0] in out and "no finished runs" not in out
    with pytest.raises(SystemExit) as stop:
        main([])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and len(err[0]) <= 200
    assert err[0] == (f"python -m mnist_lab.{command}: the following arguments are required: {missing}; "
                      f"e.g. {example} (--help says more)")
