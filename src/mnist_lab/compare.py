"""Summarise a sweep from its run folders.

    python -m mnist_lab.train -m model=mlp,convnet seed=0,1      # writes outputs/sweeps/<time>/
    python -m mnist_lab.compare outputs/sweeps/<time>             # prints the table, writes val_curves.png

Reads each run's logged scalars back with mnist_lab.loggers.read_scalars. A variant is a run's model
plus its overrides other than the seed and the keys its sweep left out of the run folders' names
(hydra.job.config.override_dirname.exclude_keys); runs of one variant with different seeds are
averaged (mean ± sample std). Columns: parameters, best val accuracy, test accuracy, seconds per
training epoch (median). The PNG (in the sweep folder) shows every run's validation accuracy per
epoch, one colour a variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from mnist_lab import runs


@dataclass
class Run:
    path: Path
    variant: str
    params: int
    val_acc: list[float]  # per epoch
    test_acc: float | None
    epoch_s: float | None


def find_runs(sweep: Path) -> list[Path]:
    """The run folders under `sweep`: those holding a config.yaml."""
    return sorted(p.parent for p in sweep.rglob(runs.CONFIG) if ".hydra" not in p.relative_to(sweep).parts)


def read_run(path: Path) -> Run:
    from mnist_lab.loggers import chosen, read_scalars

    run = runs.RunDir(path)
    config = yaml.safe_load(run.config.read_text()) or {}
    model = config.get("model", {}).get("name", "?")
    hydra_dir = path / ".hydra"
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) if (hydra_dir / "overrides.yaml").is_file() \
        else []
    ignored = {"seed", "model", *left_out_of_names(hydra_dir / "hydra.yaml")}
    rest = [o for o in overrides or [] if o.split("=", 1)[0].lstrip("+~") not in ignored]
    scalars = read_scalars(path, ("val/acc", "test/acc", "time/epoch_s"), chosen(config))
    test, epoch_s = scalars.get("test/acc"), scalars.get("time/epoch_s")
    return Run(path, " ".join([model, *rest]), count_params(config.get("model", {})), scalars.get("val/acc", []),
               test[-1] if test else None, statistics.median(epoch_s) if epoch_s else None)


def left_out_of_names(hydra_yaml: Path) -> list[str]:
    """The keys a sweep left out of its run folders' names, from the run's record of its Hydra config."""
    if not hydra_yaml.is_file():
        return []
    record = yaml.safe_load(hydra_yaml.read_text()) or {}
    return list(record.get("hydra", {}).get("job", {}).get("config", {}).get("override_dirname", {})
                .get("exclude_keys", []))


def count_params(model: dict) -> int:
    """The parameter count of the net that a run's model config builds (0 without one)."""
    if not model:
        return 0
    from mnist_lab.models import build_model

    return sum(p.numel() for p in build_model(**model).parameters())


def mean_std(xs: list[float], digits: int = 4) -> str:
    """"mean ± sample std" of `xs`, the value alone for one, "-" for none."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def table(found: list[Run]) -> str:
    """The Markdown table: one row per variant."""
    variants: dict[str, list[Run]] = {}
    for r in found:
        variants.setdefault(r.variant, []).append(r)
    lines = ["| variant | parameters | runs | best val acc | test acc | s / epoch |", "|-|-|-|-|-|-|"]
    for name, rs in variants.items():
        best = [max(r.val_acc) for r in rs if r.val_acc]
        test = [r.test_acc for r in rs if r.test_acc is not None]
        secs = [r.epoch_s for r in rs if r.epoch_s is not None]
        lines.append(f"| {name} | {rs[0].params:,} | {len(rs)} | {mean_std(best)} | {mean_std(test)} | "
                     f"{mean_std(secs, 2)} |")
    return "\n".join(lines)


def plot_curves(found: list[Run], path: Path) -> Path:
    """val_curves.png: every run's validation accuracy per epoch, one colour a variant."""
    from mnist_lab import plots

    return plots.save(plots.val_curves([(r.variant, r.val_acc) for r in found]), path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep folder (outputs/sweeps/<time>) or any folder of runs")
    parser.add_argument("--png", type=Path, help="where to write the curves (default: SWEEP/val_curves.png)")
    args = parser.parse_args(argv)
    paths = find_runs(args.sweep)
    if not paths:
        print(f"no runs under {args.sweep} (no folder with a {runs.CONFIG}): give a folder written by "
              "python -m mnist_lab.train -m", file=sys.stderr)
        return 1
    found = [read_run(p) for p in paths]
    print(table(found))
    png = args.png or args.sweep / "val_curves.png"
    plot_curves(found, png)
    print(f"validation curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
