"""Summarise a sweep from its run folders, with the statistics to say whether a difference is real.

    python -m mnist_lab.train -m model=mlp,convnet seed=0,1,2,3,4    # writes outputs/sweeps/<time>/
    python -m mnist_lab.compare outputs/sweeps/<time>                 # prints the table, writes the files below
    python -m mnist_lab.compare outputs/sweeps/<time> --tensorboard   # also mean ± std curves for TensorBoard
    python -m mnist_lab.compare outputs/sweeps --pool                 # the runs of several sweeps together

Reads each run's logged scalars back with mnist_lab.loggers.read_scalars. A variant is a run's model
plus its overrides other than the seed, the keys its sweep left out of the run folders' names
(hydra.job.config.override_dirname.exclude_keys: a sweep's constants among them) and any override every
run shares (said once, above the table); a variant's runs with different seeds are its samples, and a seed
counts once: runs of one variant with the same seed (the same sweep run twice, pooled) are named and their
values averaged into that seed's one sample. A folder holding the runs of several sweeps is compared only
with --pool (without it compare says so and stops): each sweep is its own experiment.

For every variant: best val accuracy and test accuracy as mean ± sample std, the test accuracy's 95%
bootstrap confidence interval for the mean over seeds (percentile bootstrap, 10,000 resamples, seeded), and
seconds per training epoch (median of each run's epochs). For every two variants that share seeds: the
paired difference in test accuracy, seed by seed, with its 95% bootstrap interval and a verdict (whether
the interval excludes 0), given from MIN_SEEDS shared seeds on: with fewer, the percentile bootstrap names a
winner where there is none too often (README, "Comparing runs"). With few seeds a bootstrap interval is
narrower than the truth (5 seeds can only resample 5 values): read it as a lower bound on the uncertainty.

Writes into the sweep folder: compare.md (what is printed), compare.csv (one row per variant or pair and
metric), curves.png (each run's validation accuracy per epoch, one colour a variant; training accuracy
for runs without validation) and with --tensorboard, compare_tb/<variant>/: TensorBoard runs of the
mean and mean ± std over seeds per epoch (TensorBoard's Custom Scalars tab draws them as bands).
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from mnist_lab import drawing, runs, usage
from mnist_lab.config import NOT_HPARAMS, among, chosen_loggers, override_key
from mnist_lab.errors import DamagedFileError
from mnist_lab.loggers import read_scalars
from mnist_lab.models import build_model

RESAMPLES = 10_000  # bootstrap resamples
MIN_SEEDS = 5  # shared seeds for a verdict: with fewer, 1 pair in 5 or more that do not differ gets one
# (scripts/bench_compare.py; at 5 still 1 in 6, at 10 1 in 10: the percentile bootstrap is narrow at small n)
LEVEL = 0.95  # confidence level of the intervals
TB_FOLDER = "compare_tb"  # --tensorboard's runs, in the sweep folder
EPOCH_S = ("train/epoch_s", "time/epoch_s")  # seconds per training epoch (time/: runs logged before train/)


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
    overrides: tuple[str, ...] = ()  # all of the run's overrides
    names: tuple[str, ...] = ()  # those that may tell variants apart (the variant: the model and these)


def sweeps_of(paths: list[Path], folder: Path) -> dict[Path | None, list[Path]]:
    """The run folders grouped by the sweep folder (holding Hydra's multirun.yaml) each lies in, up to `folder`;
    None for runs of no sweep."""
    groups: dict[Path | None, list[Path]] = {}
    top = folder.resolve()
    for path in paths:
        parents = [p for p in path.resolve().parents if p == top or top in p.parents]
        groups.setdefault(next((p for p in parents if (p / runs.SWEEP_RECORD).is_file()), None), []).append(path)
    return groups


def several_sweeps(groups: dict[Path | None, list[Path]], folder: Path) -> str:
    """compare's one line where `folder` holds the runs of several sweeps (or of sweeps and single runs)."""
    top = folder.resolve()
    names = [str(p.relative_to(top)) if p is not None and p != top else "single runs" if p is None else p.name
             for p in groups]
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return (f"{runs.shown(folder)} holds the runs of {len(names)} sweeps ({', '.join(names[:3])}{more}): compare one "
            "sweep folder, or add --pool to compare them together")


def read_run(path: Path) -> Run:
    run = runs.RunDir(path)
    config = runs.read_config(path)  # checked: a damaged one stops compare in one line, naming it
    model = config.get("model", {}).get("name", "?")
    overrides = run.saved_overrides()
    ignored = {"seed", "model", *left_out_of_names(run.hydra_record)}
    rest = [o for o in overrides if override_key(o) not in ignored]
    scalars = read_scalars(path, ("val/acc", "train/acc", "test/acc", *EPOCH_S), chosen_loggers(config))
    for events, problem in damaged_event_files(path):  # TensorBoard's reader stops there without a word
        print(f"{runs.shown(events)} is damaged ({problem}): the run's values logged after that are missing here; "
              "a run still writing it: compare again when it ends", file=sys.stderr)
    test = scalars.get("test/acc")
    epoch_s = next((scalars[tag] for tag in EPOCH_S if scalars.get(tag)), None)
    return Run(path, " ".join([model, *rest]), config.get("seed"), count_params(config.get("model", {})),
               scalars.get("val/acc", []), scalars.get("train/acc", []), test[-1] if test else None,
               statistics.median(epoch_s) if epoch_s else None, tuple(overrides or []), tuple(rest))


def by_what_varies(found: list[Run]) -> tuple[list[Run], list[str]]:
    """(the runs, named by what varies: an override every run has is dropped from the variant names (a sweep's
    constants, where its run folders' names still hold them); those overrides, less where the runs read and
    wrote and how they showed themselves (config.NOT_HPARAMS), for the header)."""
    shared = [o for o in found[0].overrides if all(o in r.overrides for r in found[1:])] if len(found) > 1 else []
    for r in found:
        r.variant = " ".join([r.variant.split(" ", 1)[0], *(o for o in r.names if o not in shared)])
    return found, [o for o in shared if not among(override_key(o), NOT_HPARAMS)]


def header(found: list[Run], shared: list[str]) -> str:
    """What every run has in common, said once above the table: 'Every run: trainer.max_epochs=2 ...'."""
    seeds = sorted({r.seed for r in found if r.seed is not None})
    parts = [f"{len(found)} runs", f"seeds {', '.join(map(str, seeds))}" if seeds else ""]
    return "; ".join(p for p in parts if p) + (f"; every run: {' '.join(shared)}" if shared else "")


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
        if d.n < MIN_SEEDS:
            word = f"too few for a verdict (at least {MIN_SEEDS})"
        elif low > 0:
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


def per_seed(rs: list[Run], pick) -> list[tuple[int | None, float]]:
    """(seed, value) of one variant's runs where `pick` gives a value: a seed of several runs once, with the mean
    of their values (a run without a seed is a sample of its own)."""
    seeds: dict[int | None, list[float]] = {}
    alone = []
    for r in rs:
        value = pick(r)
        if value is None:
            continue
        if r.seed is None:
            alone.append((None, value))
        else:
            seeds.setdefault(r.seed, []).append(value)
    return [(seed, statistics.mean(values)) for seed, values in seeds.items()] + alone


def repeated_seeds(found: list[Run], folder: Path | None = None) -> list[str]:
    """A line per variant whose runs share a seed, naming the seeds and the runs."""
    lines = []
    for name, rs in by_variant(found).items():
        seeds: dict[int, list[Run]] = {}
        for r in rs:
            if r.seed is not None:
                seeds.setdefault(r.seed, []).append(r)
        repeated = {seed: group for seed, group in seeds.items() if len(group) > 1}
        if repeated:
            where = [str(r.path.relative_to(folder) if folder and r.path.is_relative_to(folder) else r.path)
                     for group in repeated.values() for r in group]
            shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
            lines.append(f"{name}: seed{'s' if len(repeated) > 1 else ''} {', '.join(map(str, repeated))} in "
                         f"{len(where)} runs ({shown}); each seed counted once, the mean of its runs")
    return lines


def paired(found: list[Run]) -> list[Paired]:
    """Every two variants (in table order) with at least 2 seeds in common: b - a over the shared seeds."""
    variants = by_variant(found)
    tests = {name: {s: v for s, v in per_seed(rs, lambda r: r.test_acc) if s is not None}
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


def table(found: list[Run], folder: Path | None = None) -> str:
    """The Markdown table, one row per variant, and below it the paired differences."""
    lines = [f"| variant | parameters | seeds | best val acc | test acc | test acc {LEVEL:.0%} CI | s / epoch |",
             "|-|-|-|-|-|-|-|"]
    for name, rs in by_variant(found).items():
        best = [v for _, v in per_seed(rs, lambda r: max(r.val_acc) if r.val_acc else None)]
        test = [v for _, v in per_seed(rs, lambda r: r.test_acc)]
        secs = [v for _, v in per_seed(rs, lambda r: r.epoch_s)]
        seeds = len(per_seed(rs, lambda r: 0))  # each seed once, and each run without one
        lines.append(f"| {name} | {rs[0].params:,} | {seeds} | {mean_std(best)} | "
                     f"{mean_std(test)} | {interval(bootstrap_ci(test))} | {mean_std(secs, 2)} |")
    repeated = repeated_seeds(found, folder)
    if repeated:
        lines += ["", "Seeds run more than once:", ""] + [f"- {line}" for line in repeated]
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
            chosen = per_seed(rs, pick)
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
    stage = "validation" if any(r.val_acc for r in found) else "training"
    curves = [(r.variant, r.val_acc if stage == "validation" else r.train_acc) for r in found]
    drawing.save(drawing.accuracy_curves(curves, stage), path)
    return f"{stage} accuracy per epoch" + ("" if stage == "validation" else " (the runs hold no validation)")


def write_tensorboard(found: list[Run], folder: Path) -> list[Path]:
    """Per variant, a TensorBoard run in folder/<variant>/ with the mean and mean ± std over its seeds of the
    validation (or training) accuracy per epoch, and a Custom Scalars layout drawing them as a band."""
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
    parser = usage.Parser("compare")
    parser.add_argument("sweep", type=Path, help="a sweep folder (outputs/sweeps/<time>) or any folder of runs")
    parser.add_argument("--png", type=Path, help="where to write the curves (default: SWEEP/curves.png)")
    parser.add_argument("--tensorboard", action="store_true",
                        help=f"also write mean ± std curves per variant as TensorBoard runs in SWEEP/{TB_FOLDER}/")
    parser.add_argument("--pool", action="store_true", help="compare the runs of several sweeps under SWEEP "
                        "together (without it, such a folder is refused); a seed still counts once per variant")
    args = parser.parse_args(argv)
    paths = runs.find_runs(args.sweep)
    if not paths:
        print(f"no runs under {args.sweep} (no folder with a {runs.CONFIG}): give a folder written by "
              "python -m mnist_lab.train -m", file=sys.stderr)
        return 1
    groups = sweeps_of(paths, args.sweep)
    if len(groups) > 1 and not args.pool:
        print(several_sweeps(groups, args.sweep), file=sys.stderr)
        return 1
    try:
        found, shared = by_what_varies([read_run(p) for p in paths])
    except DamagedFileError as err:
        print(err, file=sys.stderr)
        return 1
    text = header(found, shared) + "\n\n" + table(found, args.sweep)
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
