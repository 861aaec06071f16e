"""`python -m mnist_lab.train --help` (conf/hydra/help/mnist_lab.yaml calls it through the resolver
`mnist_lab_help`): the config groups with their choices, Hydra's launcher and sweeper included, and every key
with its value and its meaning, read from the comments of config.py's typed schema."""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
import typing
from pathlib import Path
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mnist_lab import config


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): its trailing comment} of the dataclasses in `source` (config.py's)."""
    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.lineno in comments:
                    found[node.name, item.target.id] = comments[item.lineno]
    return found


def yaml_comments(path: Path) -> dict[str, str]:
    """{key: its trailing comment, or ""} of a yaml file's top-level keys (the defaults list and _target_ aside)."""
    found = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^(\w+):[^#]*(?:#\s*(.*))?$", line)
        if m and m[1] != "defaults" and not m[1].startswith("_"):
            found[m[1]] = (m[2] or "").strip()
    return found


def shown_value(value: Any) -> str:
    """A config value as one would write it on the command line."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def help_text(*, _root_: Any) -> str:
    """`python -m mnist_lab.train --help` (conf/hydra/help/mnist_lab.yaml): the config groups with their choices,
    Hydra's launcher and sweeper included, and every key with its value in this composition (the default,
    unless the command line set it) and its meaning, from this schema's own comments."""
    loader = GlobalHydra.instance().config_loader()
    choices = OmegaConf.to_container(_root_.hydra.runtime.choices, resolve=False)
    groups = [g for g in loader.list_groups("") if g != "hydra"]
    groups += [f"hydra/{g}" for g in ("launcher", "sweeper") if g in loader.list_groups("hydra")]
    lines = ["python -m mnist_lab.train [-m] [group=choice ...] [key=value ...]",
             "Train on MNIST, then test the best checkpoint; -m runs a sweep (seed=0,1,2). README: examples.",
             "", "Groups (group=choice; * marks the one in use):"]
    for group in groups:
        options = sorted(loader.get_group_options(group))
        used = choices.get(group)
        shown = [f"{o}*" if o == used or (isinstance(used, str) and o in used.strip("[]").split(",")) else o
                 for o in options]
        note = "" if used else "  (none in use)"
        lines.append(f"  {group:<16}{', '.join(shown)}{note}")
    lines.append("  several loggers at once: logger=[tensorboard,csv]")

    comments = field_comments(Path(config.__file__).read_text())
    values = OmegaConf.to_container(_root_, resolve=False)
    rows: list[tuple[str, str, str]] = []

    def walk(schema: type, node: Any, prefix: str) -> None:
        for f in dataclasses.fields(schema):
            hint = typing.get_type_hints(schema)[f.name]
            nested = next((k for k in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(k)), None)
            value = node.get(f.name) if isinstance(node, dict) else None
            if nested is not None:
                walk(nested, value, f"{prefix}{f.name}.")
                continue
            if not isinstance(node, dict):  # a section that is off (logger.mlflow without logger=mlflow)
                value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, shown_value(value), comments.get((schema.__name__, f.name), "")))

    walk(config.Config, values, "")
    for group in ("launcher", "sweeper"):
        used = choices.get(f"hydra/{group}")
        path = Path(config.CONF_DIR) / "hydra" / group / f"{used}.yaml"
        if used and path.is_file():
            section = values["hydra"][group]
            rows += [(f"hydra.{group}.{k}", shown_value(section.get(k)), c) for k, c in yaml_comments(path).items()]
    width = max(len(key) for key, _, _ in rows) + 2
    lines += ["", "Keys (key=value; the value in this composition, then what it means):"]
    for key, value, meaning in rows:
        lines.append(f"  {key:<{width}}{value:<12} {meaning}".rstrip())
    if choices.get("hydra/launcher") != "slurm":
        lines += ["", "hydra/launcher=slurm --help lists the Slurm launcher's keys too."]
    return "\n".join(lines).replace("$", "$$")  # Hydra fills the template with string.Template


def register() -> None:
    if not OmegaConf.has_resolver("mnist_lab_help"):
        OmegaConf.register_new_resolver("mnist_lab_help", help_text)


register()
