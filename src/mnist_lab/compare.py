"""Summarise a sweep from its run folders, with the statistics to say whether a difference is real.

    python -m mnist_lab.train -m model=mlp,convnet seed=0,1,2,3,4    # writes outputs/sweeps/<time>/
    python -m mnist_lab.compare outputs/sweeps/<time>                 # prints the table, writes the files below
    python -m mnist_lab.compare outputs/sweeps/<time> --tensorboard   # also mean ± std curves for TensorBoard

Reads each run's logged scalars back with mnist_lab.loggers.read_scalars. A variant is a run's model
plus its overrides other than the seed and the keys its sweep left out of the run folders' names
(hydra.job.config.override_dirname.exclude_keys); a variant's runs with different seeds are its samples.

For every variant: best val accuracy and test accuracy as mean ± sample std, the test accuracy's 95%
bootstrap confidence interval for the mean over seeds (percentile bootstrap, 10,000 resamples, seeded), and
seconds per training epoch (median of each run's epochs). For every two variants that share seeds: the
paired difference in test accuracy, seed by seed, with its 95% bootstrap interval and a verdict (whether
the interval excludes 0). With few seeds a bootstrap interval is narrower than the truth (5 seeds can
only resample 5 values): read it as a lower bound on the uncertainty.

Writes into the sweep folder: compare.md (what is printed), compare.csv (one row per variant or pair and
metric), curves.png (each run's validation accuracy per epoch, one colour a variant; training accuracy
for runs without validation) and with --tensorboard, compare_tb/<variant>/: TensorBoard runs of the
mean and mean ± std over seeds per epoch (TensorBoard's Custom Scalars tab draws them as bands).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from mnist_lab import runs
from mnist_lab.errors import DamagedFileError

RESAMPLES = 10_000  # bootstrap resamples
LEVEL = 0.95  # confidence level of the intervals
TB_FOLDER = "compare_tb"  # --tensorboard's runs, in the sweep folder


@dataclass
class Run:
    path: Path
    variant: str
    seed: int | None
    params: int
    val_acc: list[float]  # per epoch
    train_acc: list[float]  # per epoch
    test_acc: float | None
    epoch_s: float | None


def find_runs(sweep: Path) -> list[Path]:
    """The run folders under `sweep`: those holding a config.yaml."""
    return sorted(p.parent for p in sweep.rglob(runs.CONFIG) if ".hydra" not in p.relative_to(sweep).parts)


def read_run(path: Path) -> Run:
    from mnist_lab.loggers import chosen, read_scalars

    config = runs.read_config(path)  # checked: a damaged one stops compare in one line, naming it
    model = config.get("model", {}).get("name", "?")
    hydra_dir = path / ".hydra"
    overrides = runs.read_yaml(hydra_dir / "overrides.yaml", list, "restore it, or move the run aside") \
        if (hydra_dir / "overrides.yaml").is_file() else []
    ignored = {"seed", "model", *left_out_of_names(hydra_dir / "hydra.yaml")}
    rest = [o for o in overrides or [] if o.split("=", 1)[0].lstrip("+~") not in ignored]
    scalars = read_scalars(path, ("val/acc", "train/acc", "test/acc", "time/epoch_s"), chosen(config))
    for events, problem in damaged_event_files(path):  # TensorBoard's reader stops there without a word
        print(f"{runs.shown(events)} is damaged ({problem}): the run's values logged after that are missing here; "
              "a run still writing it: compare again when it ends", file=sys.stderr)
    test, epoch_s = scalars.get("test/acc"), scalars.get("time/epoch_s")
    return Run(path, " ".join([model, *rest]), config.get("seed"), count_params(config.get("model", {})),
               scalars.get("val/acc", []), scalars.get("train/acc", []), test[-1] if test else None,
               statistics.median(epoch_s) if epoch_s else None)


def damaged_event_files(run_dir: Path) -> list[tuple[Path, str]]:
    """The run's TensorBoard event files that TensorBoard's own record reader cannot read to their end (cut short
    by a kill or a full disk, or corrupted), each with the reader's reason."""
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    damaged = []
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        reader = pywrap_tensorflow.PyRecordReader_New(str(path))
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:  # the end, after a whole record
                break
            except errors.DataLossError as err:
                damaged.append((path, err.message.replace(f"{path} ", "").replace(str(path), "the file")))
                break
    return damaged


def left_out_of_names(hydra_yaml: Path) -> list[str]:
    """The keys a sweep left out of its run folders' names, from the run's record of its Hydra config."""
    if not hydra_yaml.is_file():
        return []
    record = runs.read_yaml(hydra_yaml, dict, "restore it, or move the run aside")
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


def bootstrap_ci(xs: list[float], level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = 0) -> tuple[float, float] | None:
    """The percentile-bootstrap interval of the mean of `xs` (None below 2 values): resample `xs` with
    replacement `resamples` times, take the middle `level` of the resampled means."""
    import numpy as np

    if len(xs) < 2:
        return None
    values = np.asarray(xs, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass
class Stats:
    n: int
    mean: float | None
    std: float | None
    ci: tuple[float, float] | None
    values: list[float]


def stats(xs: list[float]) -> Stats:
    return Stats(len(xs), statistics.mean(xs) if xs else None, statistics.stdev(xs) if len(xs) > 1 else None,
                 bootstrap_ci(xs), list(xs))


@dataclass
class Paired:
    a: str
    b: str
    seeds: list[int]
    diff: Stats  # of b - a, seed by seed

    def verdict(self, digits: int = 4) -> str:
        """'convnet - mlp: +0.0128 test acc, 95% CI [+0.0110, +0.0146]; 5 seeds: convnet is better'."""
        d = self.diff
        head = f"{self.b} - {self.a}: {d.mean:+.{digits}f} test acc"
        if d.ci is None:
            return f"{head}; {d.n} seed: too few for an interval"
        low, high = d.ci
        if low > 0:
            word = f"{self.b} is better"
        elif high < 0:
            word = f"{self.a} is better"
        else:
            word = "no clear difference (the interval includes 0)"
        return f"{head}, {LEVEL:.0%} CI [{low:+.{digits}f}, {high:+.{digits}f}]; {d.n} seeds: {word}"


def by_variant(found: list[Run]) -> dict[str, list[Run]]:
    variants: dict[str, list[Run]] = {}
    for r in found:
        variants.setdefault(r.variant, []).append(r)
    return variants


def paired(found: list[Run]) -> list[Paired]:
    """Every two variants (in table order) with at least 2 seeds in common: b - a over the shared seeds."""
    variants = by_variant(found)
    tests = {name: {r.seed: r.test_acc for r in rs if r.test_acc is not None and r.seed is not None}
             for name, rs in variants.items()}
    pairs = []
    names = list(variants)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            seeds = sorted(tests[a].keys() & tests[b].keys())
            if len(seeds) >= 2:
                pairs.append(Paired(a, b, seeds, stats([tests[b][s] - tests[a][s] for s in seeds])))
    return pairs


def interval(ci: tuple[float, float] | None, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "-"


def table(found: list[Run]) -> str:
    """The Markdown table, one row per variant, and below it the paired differences."""
    lines = [f"| variant | parameters | runs | best val acc | test acc | test acc {LEVEL:.0%} CI | s / epoch |",
             "|-|-|-|-|-|-|-|"]
    for name, rs in by_variant(found).items():
        best = [max(r.val_acc) for r in rs if r.val_acc]
        test = [r.test_acc for r in rs if r.test_acc is not None]
        secs = [r.epoch_s for r in rs if r.epoch_s is not None]
        lines.append(f"| {name} | {rs[0].params:,} | {len(rs)} | {mean_std(best)} | {mean_std(test)} | "
                     f"{interval(bootstrap_ci(test))} | {mean_std(secs, 2)} |")
    pairs = paired(found)
    if pairs:
        lines += ["", f"Paired differences over shared seeds ({LEVEL:.0%} percentile bootstrap, "
                      f"{RESAMPLES:,} resamples):", ""]
        lines += [f"- {p.verdict()}" for p in pairs]
    return "\n".join(lines)


def rows(found: list[Run]) -> list[dict]:
    """compare.csv: one row per variant and metric, and one per pair (paired test accuracy difference)."""
    out = []

    def row(variant: str, metric: str, s: Stats, seeds: list) -> dict:
        return {"variant": variant, "metric": metric, "n": s.n, "mean": s.mean, "std": s.std,
                "ci_low": s.ci[0] if s.ci else None, "ci_high": s.ci[1] if s.ci else None,
                "seeds": " ".join(str(x) for x in seeds), "values": " ".join(repr(v) for v in s.values)}

    for name, rs in by_variant(found).items():
        for metric, pick in (("best val/acc", lambda r: max(r.val_acc) if r.val_acc else None),
                             ("test/acc", lambda r: r.test_acc), ("time/epoch_s", lambda r: r.epoch_s)):
            chosen = [(r.seed, pick(r)) for r in rs if pick(r) is not None]
            out.append(row(name, metric, stats([v for _, v in chosen]), [s for s, _ in chosen]))
    for p in paired(found):
        out.append(row(f"{p.b} - {p.a}", "test/acc paired difference", p.diff, p.seeds))
    return out


def write_csv(found: list[Run], path: Path) -> Path:
    buffer = io.StringIO()
    fields = ["variant", "metric", "n", "mean", "std", "ci_low", "ci_high", "seeds", "values"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(found))
    return runs.write_text(path, buffer.getvalue())


def plot_curves(found: list[Run], path: Path) -> str:
    """curves.png: every run's validation accuracy per epoch, one colour a variant; the training accuracy
    where no run validated (data.val_size=0). Returns what was drawn."""
    from mnist_lab import plots

    stage = "validation" if any(r.val_acc for r in found) else "training"
    curves = [(r.variant, r.val_acc if stage == "validation" else r.train_acc) for r in found]
    plots.save(plots.accuracy_curves(curves, stage), path)
    return f"{stage} accuracy per epoch" + ("" if stage == "validation" else " (the runs hold no validation)")


def write_tensorboard(found: list[Run], folder: Path) -> list[Path]:
    """Per variant, a TensorBoard run in folder/<variant>/ with the mean and mean ± std over its seeds of the
    validation (or training) accuracy per epoch, and a Custom Scalars layout drawing them as a band."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    written = []
    stage = "val" if any(r.val_acc for r in found) else "train"
    for name, rs in by_variant(found).items():
        curves = [r.val_acc if stage == "val" else r.train_acc for r in rs]
        epochs = min((len(c) for c in curves if c), default=0)
        if not epochs:
            continue
        values = np.array([c[:epochs] for c in curves if c])
        mean, std = values.mean(axis=0), values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(epochs)
        path = folder / name.replace(" ", "_").replace("/", "_")
        with SummaryWriter(str(path)) as writer:
            tag = f"{stage}_acc_over_seeds"
            writer.add_custom_scalars({"mnist_lab compare": {
                f"{stage} acc: mean ± std over seeds": ["Margin", [f"{tag}/mean", f"{tag}/lower", f"{tag}/upper"]]}})
            for e in range(epochs):
                writer.add_scalar(f"{tag}/mean", mean[e], e + 1)
                writer.add_scalar(f"{tag}/lower", mean[e] - std[e], e + 1)
                writer.add_scalar(f"{tag}/upper", mean[e] + std[e], e + 1)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep folder (outputs/sweeps/<time>) or any folder of runs")
    parser.add_argument("--png", type=Path, help="where to write the curves (default: SWEEP/curves.png)")
    parser.add_argument("--tensorboard", action="store_true",
                        help=f"also write mean ± std curves per variant as TensorBoard runs in SWEEP/{TB_FOLDER}/")
    args = parser.parse_args(argv)
    paths = find_runs(args.sweep)
    if not paths:
        print(f"no runs under {args.sweep} (no folder with a {runs.CONFIG}): give a folder written by "
              "python -m mnist_lab.train -m", file=sys.stderr)
        return 1
    try:
        found = [read_run(p) for p in paths]
    except DamagedFileError as err:
        print(err, file=sys.stderr)
        return 1
    text = table(found)
    print(text)
    md = runs.write_text(args.sweep / "compare.md", text + "\n")
    csv_path = write_csv(found, args.sweep / "compare.csv")
    png = args.png or args.sweep / "curves.png"
    drawn = plot_curves(found, png)
    print(f"\n{md}, {csv_path}\n{drawn}: {png}")
    if args.tensorboard:
        tb = write_tensorboard(found, args.sweep / TB_FOLDER)
        print(f"mean ± std over seeds for TensorBoard (Custom Scalars tab): {', '.join(str(p) for p in tb)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
