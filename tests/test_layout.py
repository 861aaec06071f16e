"""The package's shape: no import cycles (imports inside functions count), one list of run-invariant keys
that conf/ agrees with, a map that names every module, and a train command that checks before torch loads."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import yaml

import mnist_lab
from mnist_lab import config

SRC = Path(mnist_lab.__file__).resolve().parent


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, from every import statement, at the top or in a function."""
    modules = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for m in modules:
        for node in ast.walk(ast.parse((SRC / f"{m}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_lab"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "mnist_lab" and len(parts) > 1 and parts[1] in modules and parts[1] != m:
                    graph[m].add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """A cycle of the graph as a path [a, b, ..., a], or [] where there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_among_the_packages_modules():
    graph = import_graph()
    assert graph["train"] and graph["assemble"], "the graph was read"
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_the_package_map_names_every_module():
    doc = mnist_lab.__doc__ or ""
    missing = [p.stem for p in SRC.glob("*.py") if p.stem != "__init__" and f"{p.stem} " not in doc]
    assert not missing, f"src/mnist_lab/__init__.py's map lacks {missing}"


def test_one_list_of_run_invariant_keys():
    conf = yaml.safe_load((Path(config.CONF_DIR) / "config.yaml").read_text())
    assert sorted(conf["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]) == sorted(config.NOT_IN_NAMES)
    assert config.RESUME_MAY_SET == ("data.data_dir", "threads", "trainer.enable_progress_bar", "resume", "stack")
    assert set(config.NOT_HPARAMS) >= set(config.RESUME_MAY_SET) | set(config.NOT_IN_NAMES) - {"model"}
    keys = set(config.flat_keys(config.Config))
    assert all(k in keys for k in config.NOT_HPARAMS), "every run-invariant key is a config key"
    assert config.among("logger.mlflow.tracking_uri", config.NOT_HPARAMS) and not config.among("seed", ("see",))


def test_the_train_command_checks_its_line_before_torch_loads(tmp_path):
    code = ("import sys; from mnist_lab.cmdline import prepare_argv\n"
            "try:\n    prepare_argv(['train', 'optimizer.lrr=1'])\nexcept Exception as err:\n    print(err)\n"
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.splitlines() == ["unknown config key 'optimizer.lrr' in 'optimizer.lrr=1': did you mean "
                                       "optimizer.lr?", "[]"], out.stderr
