"""One-shot GPU check of pis-calibrate: tiny grid eager vs CUDA graphs, then a time-boxed quick grid.

On a CUDA machine:

    python benchmarks/experiments/calibrate_gpu_check.py OUT_DIR [QUICK_MINUTES]

Prints a short summary table last: per op the measured/skipped counts, backends, and the best
achieved FLOP/s and bytes/s against the datasheet peaks in the profile metadata.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pis.calibrate.runner import RunOptions, calibrate
from pis.profiles.store import load_profile


def summary(path: Path) -> None:
    prof = load_profile(path)
    rows, meta = prof.rows, prof.meta
    print(f"\n== {path.name}: {len(rows)} rows, complete={meta.get('complete')}, "
          f"{meta.get('device_name')} cc {meta.get('compute_capability')}, duration {meta.get('duration_s')} s")
    print(f"   datasheet peak {meta.get('peak_flops', 0) / 1e12:.0f} TFLOP/s, {meta.get('peak_bandwidth', 0) / 1e12:.2f} TB/s")
    for op, sub in rows.groupby("op", sort=False):
        ok = sub[sub["status"] == "ok"]
        t = ok["median_us"].astype(float) * 1e-6
        fl = (ok["flops"].astype(float) / t).max() if len(ok) else np.nan
        bw = (ok["bytes"].astype(float) / t).max() if len(ok) else np.nan
        spread = ((ok["p90_us"] - ok["p10_us"]) / ok["median_us"]).astype(float)
        print(f"   {op:13s} ok {len(ok):5d} skip {len(sub) - len(ok):4d}  max {fl / 1e12:7.1f} TFLOP/s "
              f"{bw / 1e12:6.2f} TB/s  median {t.median() * 1e6 if len(ok) else float('nan'):9.1f} us  "
              f"spread p50 {spread.median():.3f}  backends {sorted(set(ok['backend'].astype(str)))[:4]}"
              + (f" skipped: {sorted(set(sub.loc[sub['status'] != 'ok', 'backend'].astype(str)))[:2]}"
                 if len(sub) > len(ok) else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for the three profiles (tiny_eager, tiny_graph, quick)")
    ap.add_argument("quick_minutes", type=float, nargs="?", default=4.0, help="time budget of the quick grid")
    args = ap.parse_args()
    out, quick_min = args.out, args.quick_minutes
    out.mkdir(parents=True, exist_ok=True)
    print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), flush=True)
    runs = {}
    for name, graphs in (("tiny_eager", False), ("tiny_graph", True)):
        t0 = time.time()
        calibrate(RunOptions(out=out / f"{name}.parquet", device="cuda:0", grid="tiny", cuda_graphs=graphs,
                             progress=False))
        print(f"{name}: {time.time() - t0:.1f} s", flush=True)
        runs[name] = load_profile(out / f"{name}.parquet").rows
    a, b = runs["tiny_eager"], runs["tiny_graph"]
    ratio = (b["median_us"] / a["median_us"]).astype(float)
    print("graph/eager median ratio per op:", {op: round(float(ratio[a["op"] == op].median()), 3)
                                               for op in a["op"].unique()})
    t0 = time.time()
    res = calibrate(RunOptions(out=out / "quick.parquet", device="cuda:0", grid="quick",
                               time_budget_min=quick_min, progress=False, cuda_graphs=True))
    dt = time.time() - t0
    print(f"quick: {res.status}, {res.done}/{res.total} points in {dt:.0f} s "
          f"({res.done / dt:.1f} pt/s)", flush=True)
    for name in ("tiny_eager", "tiny_graph", "quick"):
        summary(out / f"{name}.parquet")


if __name__ == "__main__":
    main()
