"""The commands beside train, as a user meets them: their --help and the one line for a missing argument.

    python -m mnist_lab.export --help      # export, predict, activations, explore: key=value (Hydra)
    python -m mnist_lab.compare --help     # compare, figures, reproduce: flags (argparse)

A key=value command's --help (conf/hydra/help/command.yaml) is its module's docstring (what it reads and
writes), then each key of conf/<command>.yaml with its value in this composition and the yaml's comment on
it. A required key (`???` in the yaml) left out, or an argparse command's missing argument, ends in one
line that names it and shows the docstring's example, before Hydra starts: `check_required`, `Parser`.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from mnist_lab.config import CONF_DIR
from mnist_lab.errors import ConfigError

PACKAGE = Path(__file__).resolve().parent
HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


def docstring(command: str) -> str:
    """mnist_lab.<command>'s docstring, read from its file (the module itself may be __main__, half imported)."""
    return ast.get_docstring(ast.parse((PACKAGE / f"{command}.py").read_text())) or ""


def example(command: str, key: str | None = None) -> str:
    """The docstring's first example command (naming `key=` where given), without its comment."""
    for line in docstring(command).splitlines():
        line = line.split("#")[0].strip()
        if line.startswith(f"python -m mnist_lab.{command}") and (key is None or f" {key}=" in line):
            return line
    return f"python -m mnist_lab.{command}"


def yaml_keys(path: Path) -> dict[str, tuple[str, str]]:
    """{dotted key: (its value as written, its comment)} of the leaves of a command's yaml (the defaults list and
    hydra: aside)."""
    found: dict[str, tuple[str, str]] = {}
    parents: list[tuple[int, str]] = []  # (indent, key) of the sections around the line
    for line in path.read_text().splitlines():
        m = re.match(r"^( *)(\w+):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not m:
            continue
        indent, key, value, comment = len(m[1]), m[2], m[3], (m[4] or "").strip()
        parents = [(i, k) for i, k in parents if i < indent]
        if not parents and key in ("defaults", "hydra"):
            parents = [(indent, "")]  # skip this section: "" marks it
            continue
        if any(k == "" for _, k in parents):
            continue
        if value:
            found[".".join([k for _, k in parents] + [key])] = (value, comment)
        else:
            parents.append((indent, key))
    return found


def help_text(*, _root_: Any) -> str:
    """--help of a key=value command (conf/hydra/help/command.yaml): what it does, reads and writes, then its keys."""
    command = str(_root_.hydra.job.name)
    rows = []
    for key, (_, comment) in yaml_keys(Path(CONF_DIR) / f"{command}.yaml").items():
        section, _, leaf = key.rpartition(".")
        if OmegaConf.is_missing(OmegaConf.select(_root_, section) if section else _root_, leaf):
            rows.append((key, "(required)", comment))
        else:  # resolved: ${oc.env:...} shows what this shell gives
            rows.append((key, shown(OmegaConf.select(_root_, key)), comment))
    width = max(len(k) for k, _, _ in rows) + 2
    lines = [f"python -m mnist_lab.{command} [key=value ...]", "", docstring(command), "",
             "Keys (key=value; the value in this composition, then what it means):"]
    lines += [f"  {k:<{width}}{v:<12} {c}".rstrip() for k, v, c in rows]
    lines += ["", "Flags: --cfg job prints the composed config; --hydra-help is Hydra's own help."]
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the template with string.Template


def shown(value: Any) -> str:
    """A value as one would write it on the command line: null, true, [onnx, pt2]."""
    if isinstance(value, (ListConfig, list)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, DictConfig):
        return str(OmegaConf.to_container(value))
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def check_required(command: str, argv: list[str]) -> None:
    """Before Hydra starts: a required key (`???` in conf/<command>.yaml) missing from the command line ends the
    command in one line that names it and gives an example. --help and --cfg are let through."""
    if any(a in HELP_FLAGS or a.startswith("--cfg=") for a in argv[1:]):
        return

    overrides = [a for a in argv[1:] if not a.startswith("-")]
    try:
        given = {o.key_or_group.lstrip("+~") for o in OverridesParser.create().parse_overrides(overrides)}
    except HydraException:
        return  # Hydra says what is wrong with them
    for key, (value, comment) in yaml_keys(Path(CONF_DIR) / f"{command}.yaml").items():
        if value == "???" and key not in given:
            raise ConfigError(f"python -m mnist_lab.{command} needs {key}=: {comment}; e.g. {example(command, key)}")


def start(command: str, run: Any) -> None:
    """The `if __name__ == "__main__":` of a key=value command: check_required, one line on error, then Hydra."""
    try:
        check_required(command, sys.argv)
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR"):
            raise
        sys.exit(str(err))
    run()


class Parser(argparse.ArgumentParser):
    """argparse for a flags command: --help is the module's docstring and the flags; an error is one line with
    an example (argparse's own is a usage block and the error)."""

    def __init__(self, command: str, **kwargs: Any):
        super().__init__(prog=f"python -m mnist_lab.{command}", description=docstring(command),
                         formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.command = command

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}; e.g. {example(self.command)} (--help says more)\n")


if not OmegaConf.has_resolver("mnist_lab_command_help"):
    OmegaConf.register_new_resolver("mnist_lab_command_help", help_text)
