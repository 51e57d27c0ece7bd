"""Speedup error of `pis-validate` reports: predicted vs measured speedup over dense.

Each pruned configuration is paired with the dense model of the same executor at the same
point (`pis.validate.report.with_speedups`); this prints, per report, the median and max
|speedup error| and how many configurations are past a threshold, over the families asked for
(default: the static families, which run on Hugging Face beside the dense model).

    python benchmarks/tools/speedup_error.py REPORT.csv [REPORT.csv ...] [--families all] [--over 10]

Reports written before `speedup_error_pct` existed are paired here from their own columns.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from pis.profiles.schema import ROUTED_DECODER_OPS
from pis.simulator.pruning import FAMILIES
from pis.validate.report import with_speedups

#: Families that run on Hugging Face beside the dense model: all but dense and the routed ones,
#: which run on the reference decoder.
STATIC = tuple(name for name in FAMILIES if name != "dense" and name not in ROUTED_DECODER_OPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--families", default="static", help="'static' (default), 'all', or a comma list")
    ap.add_argument("--over", type=float, default=10.0, help="count configurations past this |error| (%%)")
    args = ap.parse_args()
    for path in args.reports:
        report = with_speedups(pd.read_csv(path))
        if args.families == "static":
            report = report[report["method"].isin(STATIC)]
        elif args.families != "all":
            report = report[report["method"].isin(args.families.split(","))]
        err = report["speedup_error_pct"].abs().dropna()
        if err.empty:
            print(f"{path}: no pruned configuration with a measured dense counterpart")
            continue
        print(f"{path}: {len(err)} configurations, median |speedup error| {np.median(err):.1f} %, "
              f"max {err.max():.1f} %, {int((err > args.over).sum())} past {args.over:g} %")


if __name__ == "__main__":
    main()
