"""compare's statistics: bootstrap intervals over seeds, paired differences, what it draws without validation."""

from __future__ import annotations

import csv
import statistics
import warnings
from pathlib import Path

import pytest

from mnist_lab import compare


def run(variant: str, seed: int, test_acc: float, val: list[float] | None = None) -> compare.Run:
    return compare.Run(Path(f"{variant}_{seed}"), variant, seed, 0, val or [], [0.5, 0.6], test_acc, 1.0)


def test_bootstrap_interval_of_the_mean():
    xs = [0.970, 0.975, 0.980, 0.978, 0.972]
    low, high = compare.bootstrap_ci(xs)
    assert min(xs) <= low < statistics.mean(xs) < high <= max(xs)
    assert compare.bootstrap_ci(xs) == (low, high)  # seeded: the same interval every time
    wide = compare.bootstrap_ci([0.90, 0.99, 0.93, 0.97, 0.95])
    assert wide[1] - wide[0] > high - low
    assert compare.bootstrap_ci([0.97]) is None


@pytest.mark.parametrize("gain, verdict", [(0.012, "convnet is better"), (-0.012, "mlp is better"),
                                           (0.0, "no clear difference (the interval includes 0)")])
def test_paired_difference_and_verdict(gain, verdict):
    base = [0.970, 0.976, 0.972, 0.979, 0.974]
    noise = [0.001, -0.001, 0.0005, 0.0, -0.0005] if gain else [0.004, -0.003, 0.002, -0.004, 0.001]
    found = [run("mlp", s, a) for s, a in enumerate(base)] + \
            [run("convnet", s, a + gain + e) for s, (a, e) in enumerate(zip(base, noise, strict=True))]
    (pair,) = compare.paired(found)
    assert (pair.a, pair.b, pair.seeds) == ("mlp", "convnet", [0, 1, 2, 3, 4])
    line = pair.verdict()
    assert line.startswith(f"convnet - mlp: {pair.diff.mean:+.4f} test acc, 95% CI [") and line.endswith(verdict)
    assert "; 5 seeds: " in line


def test_pairs_only_over_shared_seeds_and_files(tmp_path):
    found = [run("mlp", 0, 0.97), run("mlp", 1, 0.98), run("mlp", 2, 0.975),
             run("convnet", 1, 0.99), run("convnet", 2, 0.985), run("convnet", 7, 0.99)]
    (pair,) = compare.paired(found)
    assert pair.seeds == [1, 2] and pair.diff.values == pytest.approx([0.01, 0.01])
    text = compare.table(found)
    assert "| mlp | 0 | 3 | - | 0.9750 ± 0.0050 | [" in text and "convnet - mlp: +0.0100 test acc" in text
    compare.write_csv(found, tmp_path / "compare.csv")
    lines = (tmp_path / "compare.csv").read_text().splitlines()
    assert lines[0] == "variant,metric,n,mean,std,ci_low,ci_high,seeds,values"
    assert any(line.startswith("convnet - mlp,test/acc paired difference,2,") for line in lines)
    assert any(line.startswith("mlp,test/acc,3,0.975,") and line.endswith(",0 1 2,0.97 0.98 0.975") for line in lines)


def test_runs_without_validation_draw_their_training_accuracy(tmp_path):
    found = [run("mlp", s, 0.97) for s in range(3)]  # no val/acc: experiment=keras_seed trains on all 60,000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend" included
        drawn = compare.plot_curves(found, tmp_path / "curves.png")
    assert drawn == "training accuracy per epoch (the runs hold no validation)"
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare.plot_curves([compare.Run(Path("x"), "mlp", 0, 0, [], [], None, None)], tmp_path / "empty.png")


def write_run(folder: Path, model: str, seed: int, test_acc: float) -> None:
    """A run folder as compare reads it: config.yaml, Hydra's overrides, a metrics.csv (logger=csv)."""
    import yaml

    (folder / ".hydra").mkdir(parents=True)
    config = {"model": {"name": model, "init": "torch"}, "seed": seed, "logger": {"csv": {}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model={model}", f"seed={seed}"]))
    (folder / "metrics.csv").write_text(f"epoch,step,val/acc,test/acc\n0,10,{test_acc - 0.001},\n0,10,,{test_acc}\n")


def two_sweeps(root: Path) -> Path:
    """outputs/sweeps/ holding sweep a (seeds 0-2) and sweep b (seeds 1-5) of mlp and convnet: seeds 1, 2 in both."""
    sweeps = root / "sweeps"
    for name, seeds in (("a", range(3)), ("b", range(1, 6))):
        (sweeps / name).mkdir(parents=True)
        (sweeps / name / "multirun.yaml").write_text("hydra: {}\n")
        for i, seed in enumerate(seeds):
            write_run(sweeps / name / f"{2 * i}_mlp_seed:{seed}", "mlp", seed, 0.970 + 0.001 * seed)
            write_run(sweeps / name / f"{2 * i + 1}_convnet_seed:{seed}", "convnet", seed,
                      0.985 + 0.001 * seed + (0.002 if name == "b" else 0.0))
    return sweeps


def test_several_sweeps_only_when_asked_and_a_seed_counts_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweeps = two_sweeps(tmp_path)
    assert compare.main([str(sweeps)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("sweeps holds the runs of 2 sweeps (a, b): compare one sweep folder, or add --pool to compare "
                   "them together")
    assert not (sweeps / "compare.md").exists()

    assert compare.main([str(sweeps), "--pool"]) == 0
    out = capsys.readouterr().out
    mlp = next(line for line in out.splitlines() if line.startswith("| mlp |"))
    assert mlp.split(" | ")[2] == "6"  # seeds 0-5, not 8 runs
    repeated = [line for line in out.splitlines() if line.startswith("- mlp: ") or line.startswith("- convnet: ")]
    assert repeated[0] == ("- mlp: seeds 1, 2 in 4 runs (a/2_mlp_seed:1, b/0_mlp_seed:1, a/4_mlp_seed:2, "
                           "b/2_mlp_seed:2); each seed counted once, the mean of its runs")
    rows = list(csv.DictReader((sweeps / "compare.csv").open()))
    convnet = next(r for r in rows if r["variant"] == "convnet" and r["metric"] == "test/acc")
    assert convnet["n"] == "6" and convnet["seeds"] == "0 1 2 3 4 5"
    assert [float(v) for v in convnet["values"].split()][1] == pytest.approx(0.985 + 0.001 + 0.001)  # (a + b) / 2
    pair = next(r for r in rows if r["metric"] == "test/acc paired difference")
    assert pair["n"] == "6" and pair["seeds"] == "0 1 2 3 4 5"
    assert "6 seeds: convnet is better" in out

    assert compare.main([str(sweeps / "a")]) == 0  # one sweep, 3 seeds: an interval, no verdict
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("- convnet - mlp"))
    assert line.endswith("; 3 seeds: too few for a verdict (at least 5)") and "95% CI [" in line
