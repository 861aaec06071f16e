"""Run a finished run again from its saved config and say, metric by metric, whether it reproduces.

    python -m mnist_lab.reproduce outputs/runs/<time>                  # exit status 0: reproduced, 1: not
    python -m mnist_lab.reproduce outputs/sweeps/<time>/3_convnet_seed:1 --out outputs/reproduce/check

The new run goes to a folder of its own (default outputs/reproduce/<time>_<run name>/), with the run's
config.yaml as it was saved, its CPU thread count as its provenance recorded it, and no export. Then each
metric of the run's result.yaml (the last epoch's train/ and val/ means, the test metrics; a run from
before result.yaml: the last values its loggers hold) is compared with the new run's:

    identical         expected where both runs trained on the CPU with the same torch version, thread count
                      and number of processes: the same arithmetic in the same order, to the last bit
    within tolerance  elsewhere (a GPU, another torch or CPU count): accuracies within --acc-tol (0.005),
                      losses within --loss-rtol (10%) of the recorded value, about three and one and a half
                      standard deviations of the seed-to-seed spread (README, Results)
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import yaml

from mnist_lab import provenance as prov
from mnist_lab import runs, usage
from mnist_lab.config import chosen_loggers
from mnist_lab.errors import DamagedFileError
from mnist_lab.loggers import read_scalars
from mnist_lab.resume import saved_config
from mnist_lab.train import train

ACC_TOL = 0.005  # absolute, on accuracies
LOSS_RTOL = 0.10  # relative, on losses
TAGS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")


def recorded_metrics(run: runs.RunDir, config: dict) -> dict[str, float]:
    """The run's final metrics: result.yaml's, else the last value of each tag its loggers hold."""
    if run.result.is_file():  # checked: a damaged one raises DamagedFileError
        return runs.result_metrics(run.path)
    return {tag: values[-1] for tag, values in read_scalars(run.path, TAGS, chosen_loggers(config)).items() if values}


def environment(provenance: dict) -> dict[str, Any]:
    """What decides whether two CPU runs compute the same bits: device, torch, threads, processes, and whether
    the run trained in a stack (mnist_lab.stack: batched products round differently)."""
    host = provenance.get("host", {})
    return {"device": host.get("device", "cpu" if not host.get("gpus") else "unknown"),
            "torch": provenance.get("versions", {}).get("torch"), "threads": host.get("torch_threads"),
            "processes": host.get("world_size", 1), "stacked": bool(provenance.get("stacked"))}


def verdicts(old: dict[str, float], new: dict[str, float], exact: bool, acc_tol: float = ACC_TOL,
             loss_rtol: float = LOSS_RTOL) -> list[tuple[str, float, float | None, str, bool]]:
    """(metric, recorded, reproduced, verdict, ok) for each recorded metric."""
    out = []
    for metric, before in old.items():
        after = new.get(metric)
        if after is None:
            out.append((metric, before, None, "missing in the new run", False))
        elif after == before:
            out.append((metric, before, after, "identical", True))
        elif exact:
            out.append((metric, before, after, "differs (expected identical)", False))
        else:
            limit = acc_tol if metric.endswith("acc") else loss_rtol * abs(before)
            ok = abs(after - before) <= limit
            out.append((metric, before, after, f"{'within' if ok else 'beyond'} tolerance ({limit:.2g})", ok))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = usage.Parser("reproduce")
    parser.add_argument("run", type=Path, help="a finished run folder (holding config.yaml)")
    parser.add_argument("--out", type=Path, help="the new run's folder (default: outputs/reproduce/<time>_<name>)")
    parser.add_argument("--data-dir", help="where the data is now, if not where the run read it")
    parser.add_argument("--acc-tol", type=float, default=ACC_TOL, help="allowed |difference| of accuracies where "
                        "identical results are not expected (default %(default)s)")
    parser.add_argument("--loss-rtol", type=float, default=LOSS_RTOL, help="allowed relative difference of losses "
                        "there (default %(default)s)")
    args = parser.parse_args(argv)
    run = runs.RunDir(args.run.expanduser().resolve())
    if not run.config.is_file():
        print(f"{run.path} holds no {runs.CONFIG}: give the folder of a run of python -m mnist_lab.train",
              file=sys.stderr)
        return 2
    try:
        saved = runs.read_config(run.path)  # an empty or garbled one would train some other config
        old = recorded_metrics(run, saved)
        provenance = runs.read_yaml(run.provenance, dict, "restore it, or move it aside (reproduce then takes "
                                    "the current code)") if run.provenance.is_file() else {}
    except DamagedFileError as err:
        print(err, file=sys.stderr)
        return 2
    if not old:
        print(f"{run.path} holds no metrics to compare with (no {runs.RESULT}, nothing logged): the run did not "
              "finish; resume it first (python -m mnist_lab.train resume=<run>)", file=sys.stderr)
        return 2
    out = args.out or Path("outputs/reproduce") / f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}_{run.path.name}"
    cfg = config_again(provenance, out.resolve(), args.data_dir, run)
    train(cfg)
    new_run = runs.RunDir(cfg.output_dir)
    new = recorded_metrics(new_run, saved)
    before = environment(provenance)
    after = environment(yaml.safe_load(new_run.provenance.read_text()) if new_run.provenance.is_file() else {})
    exact = before == after and before["device"] == "cpu"
    if exact:
        expect = (f"identical (CPU, torch {after['torch']}, {after['threads']} thread(s), {after['processes']} "
                  "process(es), as the run recorded)")
    else:
        changed = ", ".join(f"{k} {before[k]} -> {after[k]}" for k in before if before[k] != after[k])
        expect = (f"within tolerance: accuracies ±{args.acc_tol:g}, losses ±{args.loss_rtol:.0%} "
                  f"({changed or 'not a CPU run'}: the same bits are not expected)")
    rows = verdicts(old, new, exact, args.acc_tol, args.loss_rtol)
    print(f"\nreproduce {run.path}\n       as {new_run.path}\nexpected: {expect}")
    print(f"{'metric':<12} {'recorded':>12} {'reproduced':>12} {'difference':>12}  verdict")
    for metric, a, b, verdict, _ in rows:
        diff = f"{b - a:+.3e}" if b is not None else "-"
        shown = f"{b:.6f}" if b is not None else "-"
        print(f"{metric:<12} {a:>12.6f} {shown:>12} {diff:>12}  {verdict}")
    failed = [m for m, *_, ok in rows if not ok]
    if failed:
        print(f"NOT reproduced: {', '.join(failed)} {'differ' if len(failed) > 1 else 'differs'} "
              f"(git: the run {commit(provenance)}, now {commit({'git': prov.git_state()[0]})})")
        return 1
    print(f"reproduced: {len(rows)} metrics {'identical' if exact else 'within tolerance'}")
    return 0


def config_again(provenance: dict, out: Path, data_dir: str | None, run: runs.RunDir):
    """The saved config, typed (resume.saved_config, as resume= reads it), for a new run in `out`: the recorded
    thread count, no export, and the data folder found again (a relative one is taken from the run's working
    directory where the current one lacks it)."""
    cfg = saved_config(run, f"reproduce {run.path}")
    cfg.output_dir, cfg.resume, cfg.export = str(out), None, False
    if cfg.threads is None and provenance.get("host", {}).get("torch_threads"):
        cfg.threads = provenance["host"]["torch_threads"]
    if data_dir:
        cfg.data.data_dir = data_dir
    elif not Path(cfg.data.data_dir).is_absolute() and not Path(cfg.data.data_dir).exists():
        then = Path(provenance.get("command", {}).get("cwd", run.path)) / cfg.data.data_dir
        if then.exists():
            cfg.data.data_dir = str(then)
    return cfg


def commit(provenance: dict) -> str:
    git = provenance.get("git", {})
    if "commit" not in git:
        return "unknown commit"
    return f"{git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}"


if __name__ == "__main__":
    sys.exit(main())
