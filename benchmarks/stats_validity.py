"""Null rate (and power) of every p-value the report shows, under the nulls of issues 10 and 21.

    python benchmarks/stats_validity.py [--null 500] [--power 0] [--seed 0] [--scenario NAME ...] [--family F ...]

The base study has 24 prompts (8 per abstractness class, 4 domains) and 3 subjects x 3 methods;
every value is prompt effect (SD 1.0, shared by all models) + model effect (SD 0.5) + subject
effect (SD 0.5) + method offset (0 / 0.5 / 1.0; zero for the method test's null) + noise (SD 0.3).
The scenarios of ``stats_nulls.SCENARIOS`` add domain main effects (demo and paper size: 15
subjects x 3 methods x 200 prompts), method-dependent variance, a Textual Inversion method whose
pairs are all structural zeros with skewed zero-heavy values, t3 noise, models missing 10% of
prompts, and 1 or 2 subjects per method. Each test runs through the same public function the
analysis uses (permutation tests with 199 draws per study). The table gives the share of p < 0.05
under the null with its binomial 95% interval and the share of studies where the test could be
computed (a non-computable test never rejects). Rows marked "(old)" or "(CSV only)" are not shown
in the report; they are measured for comparison.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from stats_nulls import FAMILIES, SCENARIOS, null_rate_table  # noqa: E402


def _number(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null", type=int, default=500, help="simulated null studies per scenario and family")
    parser.add_argument("--power", type=int, default=0, help="simulated studies with a planted effect (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES), help="default: all")
    args = parser.parse_args()
    gc.freeze()  # the simulation loops allocate many small frames; a frozen heap keeps collections cheap
    start = time.perf_counter()
    table = null_rate_table(
        args.null, args.power, args.seed, tuple(args.scenario or SCENARIOS), tuple(args.family or FAMILIES)
    )
    print("| null | family | test | null rate (95% CI) | computable | shown | power |")
    print("|---|---|---|---|---|---|---|")
    for row in table.itertuples():
        rate = f"{_number(row.null_rate)} ({_number(row.null_ci_low)}-{_number(row.null_ci_high)})"
        if row.null_rate != row.null_rate:
            rate = "-"
        print(
            f"| {row.scenario} | {row.family} | {row.test} | {rate} | {_number(row.computable)} "
            f"| {'yes' if row.shown else 'no'} | {_number(row.power)} |"
        )
    print(f"\n{time.perf_counter() - start:.0f} s; seed {args.seed}; {args.null} null studies per row")


if __name__ == "__main__":
    main()
