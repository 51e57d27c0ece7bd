"""Re-predict a saved `pis-validate` report with another profile or a newer simulator.

Measurements are expensive (a GPU lease); predictions are not. This keeps each report's
measured_ms and recomputes predicted_ms and error_pct for the same configurations, so a
simulator change can be scored against GPU measurements taken earlier, on a machine with no GPU.

    python benchmarks/rescore_validation.py REPORT.csv --profile h100 [--suite full] [--device cuda] [--out R.csv]

The configurations are matched by their label (the report's ``config`` column) in the suite
the report was made with.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pis.calibrate.validate import SPEEDUP_KEY, error_pct, predict, suite_configs, summarize, with_speedups
from pis.calibrate.validate_cli import format_speedup
from pis.profiles.shipped import resolve_profile
from pis.profiles.store import load_profile
from pis.simulator.estimator import Estimator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", help="write the rescored report (CSV); refuses to overwrite a file")
    args = ap.parse_args()
    if args.out and Path(args.out).exists():
        ap.error(f"{args.out} exists; choose another --out")

    df = pd.read_csv(args.report)
    configs = {c.label: c for c in suite_configs(args.suite, torch.device(args.device))}
    est = Estimator(load_profile(resolve_profile(args.profile)))
    rows = []
    for r in df.itertuples():
        cfg = configs.get(r.config)
        if cfg is None or not np.isfinite(r.measured_ms):
            continue
        pred, extrap, factor = predict(est, cfg)
        rows.append(dict(config=r.config, method=cfg.method, phase=cfg.phase, status="ok",
                         measured_ms=r.measured_ms, predicted_ms=pred,
                         error_pct=error_pct(pred, r.measured_ms), predicted_ops_ms=pred / factor,
                         ops_error_pct=error_pct(pred / factor, r.measured_ms), context_factor=factor,
                         extrapolated=extrap, **{k: getattr(r, k) for k in SPEEDUP_KEY if k != "phase"}))
    out = with_speedups(pd.DataFrame(rows))
    show = ["config", "measured_ms", "predicted_ms", "error_pct", "context_factor", "extrapolated"]
    print(out[show].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print()
    print(summarize(out).to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    err = out["error_pct"].abs()
    print(f"\n{len(out)} configurations: median |error| {err.median():.1f} %, max {err.max():.1f} %")
    speed = format_speedup(out)
    if speed:
        print(speed)
    if args.out:
        out.to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
