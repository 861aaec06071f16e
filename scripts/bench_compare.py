"""How often compare's paired verdict names a winner where there is none, by the number of shared seeds.

    python scripts/bench_compare.py --trials 2000

Draws `n` paired differences from a normal distribution of mean 0 (two variants that do not differ),
takes compare's own interval (mnist_lab.compare.bootstrap_ci: 95% percentile bootstrap, 10,000 resamples)
and counts how often it excludes 0, i.e. how often compare would say "is better". A 95% interval should do so
5% of the time. Prints a row per n and one JSON line; compare.MIN_SEEDS is chosen from it (README).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from mnist_lab import compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2000, help="simulated comparisons per n")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8, 10], help="the n to try")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rates = {}
    for n in args.seeds:
        wrong = 0
        for trial in range(args.trials):
            low, high = compare.bootstrap_ci(list(rng.normal(size=n)), seed=trial)
            wrong += low > 0 or high < 0
        rates[n] = wrong / args.trials
        marker = "  <- compare.MIN_SEEDS" if n == compare.MIN_SEEDS else ""
        print(f"{n:3d} seeds: a verdict where there is no difference in {rates[n]:.1%} of {args.trials:,}{marker}")
    print(json.dumps({"trials": args.trials, "resamples": compare.RESAMPLES, "false_verdicts": rates}))


if __name__ == "__main__":
    main()
