"""How repeatable is the ground truth? Compare the measured times of several `pis-validate` reports.

A simulator cannot be scored more finely than its reference measurements repeat. This reads
two or more reports of the same suite (made at different times on the same machine) and
prints, per configuration, the spread of ``measured_ms`` across runs, (max / min − 1) · 100,
and its median and max over the suite. Predictions in the reports are ignored.

    python benchmarks/tools/repeatability.py benchmarks/results/archive/repeat/validate_cpu_full_run*.csv
"""

from __future__ import annotations

import argparse

import pandas as pd


def spread_table(paths: list[str]) -> pd.DataFrame:
    """One row per configuration measured in every report: the times and their spread in %."""
    runs = []
    for i, path in enumerate(paths):
        df = pd.read_csv(path)
        df = df[df["status"] == "ok"].set_index("config")["measured_ms"].rename(f"run{i + 1}_ms")
        runs.append(df)
    table = pd.concat(runs, axis=1, join="inner")
    table["spread_pct"] = (table.max(axis=1) / table.min(axis=1) - 1.0) * 100.0
    return table.sort_values("spread_pct")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", help="pis-validate CSV reports of the same suite")
    args = ap.parse_args()
    if len(args.reports) < 2:
        ap.error("give at least two reports")
    table = spread_table(args.reports)
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    s = table["spread_pct"]
    print(f"\n{len(table)} configurations in {len(args.reports)} runs: spread of measured_ms median "
          f"{s.median():.1f} %, p90 {s.quantile(0.9):.1f} %, max {s.max():.1f} %")


if __name__ == "__main__":
    main()
