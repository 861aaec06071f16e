"""Summarise a sweep from its TensorBoard event files.

    python -m mnist_lab.train -m model=mlp,convnet seed=0,1      # writes outputs/sweeps/<time>/
    python -m mnist_lab.compare outputs/sweeps/<time>             # prints the table, writes val_curves.png

Reads each run's events with tensorboard's own EventAccumulator. A variant is a run's model plus its
overrides other than the seed; runs of one variant with different seeds are averaged (mean ± sample
std). Columns: parameters, best val accuracy, test accuracy, seconds per training epoch (median).
The PNG (in the sweep folder) shows every run's validation accuracy per epoch, one colour a variant.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

IGNORED = ("seed", "data.data_dir", "output_dir", "threads", "trainer.enable_progress_bar", "model")


@dataclass
class Run:
    path: Path
    variant: str
    params: int
    val_acc: list[float]  # per epoch
    test_acc: float | None
    epoch_s: float | None


def find_runs(sweep: Path) -> list[Path]:
    return sorted({p.parent for p in sweep.rglob("events.out.tfevents.*")})


def read_run(path: Path) -> Run:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(path), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])

    def values(tag: str) -> list[float]:
        return [e.value for e in events.Scalars(tag)] if tag in tags else []

    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    model = config.get("model", {}).get("name", "?")
    overrides_file = path / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    rest = [o for o in overrides or [] if o.split("=", 1)[0].lstrip("+~") not in IGNORED]
    test = values("test/acc")
    epoch_s = values("time/epoch_s")
    return Run(path, " ".join([model, *rest]), count_params(config.get("model", {})), values("val/acc"),
               test[-1] if test else None, statistics.median(epoch_s) if epoch_s else None)


def count_params(model: dict) -> int:
    if not model:
        return 0
    from mnist_lab.models import build_model

    return sum(p.numel() for p in build_model(**model).parameters())


def mean_std(xs: list[float], digits: int = 4) -> str:
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def table(runs: list[Run]) -> str:
    variants: dict[str, list[Run]] = {}
    for r in runs:
        variants.setdefault(r.variant, []).append(r)
    lines = ["| variant | parameters | runs | best val acc | test acc | s / epoch |", "|-|-|-|-|-|-|"]
    for name, rs in variants.items():
        best = [max(r.val_acc) for r in rs if r.val_acc]
        test = [r.test_acc for r in rs if r.test_acc is not None]
        secs = [r.epoch_s for r in rs if r.epoch_s is not None]
        lines.append(f"| {name} | {rs[0].params:,} | {len(rs)} | {mean_std(best)} | {mean_std(test)} | "
                     f"{mean_std(secs, 2)} |")
    return "\n".join(lines)


def plot_curves(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for r in runs:
        if not r.val_acc:
            continue
        colour = colours.setdefault(r.variant, f"C{len(colours)}")
        ax.plot(range(1, len(r.val_acc) + 1), r.val_acc, marker="o", color=colour, alpha=0.85,
                label=r.variant if r.variant not in ax.get_legend_handles_labels()[1] else None)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"validation accuracy per epoch ({len(runs)} runs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep folder (outputs/sweeps/<time>) or any folder of runs")
    parser.add_argument("--png", type=Path, help="where to write the curves (default: SWEEP/val_curves.png)")
    args = parser.parse_args(argv)
    paths = find_runs(args.sweep)
    if not paths:
        print(f"no TensorBoard runs under {args.sweep}: give a folder written by python -m mnist_lab.train -m",
              file=sys.stderr)
        return 1
    runs = [read_run(p) for p in paths]
    print(table(runs))
    png = args.png or args.sweep / "val_curves.png"
    plot_curves(runs, png)
    print(f"validation curves: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
