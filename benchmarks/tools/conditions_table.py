"""One row per fidelity condition: speedup error and drift-corrected error of `pis-validate` reports.

Each report is one condition (`benchmarks/experiments/fidelity_condition.sh` writes them, one per
calibrate-then-validate run). The row names the CPU, threads and dtype the report ran with, then:

* speedup error: |predicted / measured speedup over dense - 1| over the pruned and quantized
  configurations (ratios measured back to back; machine drift cancels in them);
* absolute error as measured, and with the machine's drift taken out (each round re-timed the
  profile's own points first: ``drift_adjusted_error_pct``);
* the machine drift itself, and whether the condition meets the goals (speedup median <= 5 %,
  max <= 12 %; drift-corrected median <= 8 %, max <= 15 %).

    python benchmarks/tools/conditions_table.py OUTDIR/*.csv [--markdown]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pis.validate.report import with_speedups

#: (median, max) goals in percent.
SPEEDUP_GOAL, ABSOLUTE_GOAL = (5.0, 12.0), (8.0, 15.0)


def condition_row(path: Path) -> dict[str, object]:
    rep = pd.read_csv(path)
    ok = rep[rep["status"] == "ok"]
    if "speedup_error_pct" not in ok or ok["speedup_error_pct"].isna().all():
        ok = with_speedups(ok)
    sp = ok["speedup_error_pct"].abs().dropna()
    ab = ok["error_pct"].abs().dropna()
    adj = ok["drift_adjusted_error_pct"].abs().dropna() if "drift_adjusted_error_pct" in ok else pd.Series(dtype=float)
    drift = ok["machine_drift_pct"].dropna() if "machine_drift_pct" in ok else pd.Series(dtype=float)
    quant = ok[ok.get("weights", pd.Series("native", index=ok.index)).fillna("native") != "native"]
    row: dict[str, object] = {
        "condition": path.stem,
        "cpu": str(ok["device_name"].iloc[0]) if "device_name" in ok and len(ok) else "?",
        "threads": int(ok["threads"].iloc[0]) if "threads" in ok and len(ok) else -1,
        "dtype": str(ok["dtype"].iloc[0]) if len(ok) else "?",
        "suite": str(ok["suite"].iloc[0]) if "suite" in ok and len(ok) else "?",
        "rounds": int(ok["rounds"].max()) if "rounds" in ok and len(ok) else 1,
        "configs": f"{len(ok)}/{len(rep)}",
        "speedup_med": sp.median(), "speedup_max": sp.max(),
        "abs_med": ab.median(), "abs_max": ab.max(),
        "drift_med": drift.median() if len(drift) else np.nan,
        "adj_med": adj.median() if len(adj) else np.nan, "adj_max": adj.max() if len(adj) else np.nan,
        "quant_adj_med": quant["drift_adjusted_error_pct"].abs().median() if len(quant) else np.nan,
        "quant_adj_max": quant["drift_adjusted_error_pct"].abs().max() if len(quant) else np.nan,
    }
    row["speedup_goal"] = bool(row["speedup_med"] <= SPEEDUP_GOAL[0] and row["speedup_max"] <= SPEEDUP_GOAL[1])
    row["abs_goal"] = bool(row["adj_med"] <= ABSOLUTE_GOAL[0] and row["adj_max"] <= ABSOLUTE_GOAL[1])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+", type=Path)
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (docs/fidelity.md)")
    args = ap.parse_args()
    table = pd.DataFrame([condition_row(p) for p in args.reports])
    if args.markdown:
        print("| condition | CPU | threads | dtype | suite | configs | speedup err median / max | "
              "abs err median / max | drift | drift-corrected median / max | quantized (corrected) | goals |")
        print("| --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in table.itertuples():
            goals = ("speedup ✓" if r.speedup_goal else "speedup ✗") + ", " + ("abs ✓" if r.abs_goal else "abs ✗")
            quant = "-" if np.isnan(r.quant_adj_med) else f"{r.quant_adj_med:.1f} / {r.quant_adj_max:.1f} %"
            print(f"| {r.condition} | {r.cpu} | {r.threads} | {r.dtype} | {r.suite} x{r.rounds} | {r.configs} | "
                  f"{r.speedup_med:.1f} / {r.speedup_max:.1f} % | {r.abs_med:.1f} / {r.abs_max:.1f} % | "
                  f"{r.drift_med:+.1f} % | {r.adj_med:.1f} / {r.adj_max:.1f} % | {quant} | {goals} |")
    else:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))


if __name__ == "__main__":
    main()
