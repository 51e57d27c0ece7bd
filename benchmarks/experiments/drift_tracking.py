"""Does pis-validate's drift probe track how the machine's speed moves? Run the quick suite N times.

Per round: the probe's reading (``pis.validate.drift.measure_drift``: a dozen of the profile's
points re-measured) next to how much the suite's own measurements moved since round 0 (median
ratio over the configurations) and the suite's signed median error. If the probe tracks the
machine, the first two columns move together. CPU only.

    python benchmarks/experiments/drift_tracking.py --profile cpu.parquet --rounds 6 [--out drift.csv]

On the 2-core VM (2026-11-26, six rounds, ~9 min) the probe reads -3.0 to +4.4 % while the
suite moves 0 to -4.9 %, with no correlation between them; back to back, the probe alone
repeats within 1 % (std). So it does not resolve drifts of a few percent on this machine.
The rounds of that day: ``benchmarks/results/archive/drift_tracking_2026-11-26.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pis.simulator.api import Simulator
from pis.validate.drift import measure_drift
from pis.validate.run import EFFORT, run_configs
from pis.validate.suites import suite_configs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="a CPU profile of this machine")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, help="also write the rounds as CSV (refuses to overwrite)")
    args = ap.parse_args()
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; pick another --out")
    sim = Simulator(args.profile)
    dev = torch.device("cpu")
    configs = suite_configs("quick", dev.type)
    first, rows = None, []
    for i in range(args.rounds):
        drift = measure_drift(sim.profile, dev, sim.estimator.dtype)
        rep = run_configs(configs, sim, dev, "fp32", EFFORT["quick"])
        measured = rep["measured_ms"].to_numpy()
        first = measured if first is None else first
        row = dict(round=i, probe_drift_pct=drift.median_pct,
                   suite_vs_round0_pct=(np.median(measured / first) - 1) * 100,
                   signed_median_error_pct=float(np.median(rep["error_pct"])))
        rows.append(row)
        print(f"round {i}: probe {row['probe_drift_pct']:+.1f} %, suite vs round 0 "
              f"{row['suite_vs_round0_pct']:+.1f} %, signed median error {row['signed_median_error_pct']:+.1f} %",
              flush=True)
    df = pd.DataFrame(rows)
    if len(df) > 2:
        r = np.corrcoef(df["probe_drift_pct"], df["suite_vs_round0_pct"])[0, 1]
        print(f"correlation of probe and suite movement over {len(df)} rounds: {r:+.2f}")
    if args.out is not None:
        df.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
