"""Where does one family's prediction hold? Validate it over sparsity × batch × length.

The validation suites test each family at one sparsity and three shapes. This measures one
family (with the dense reference decoder beside it, as a control) over a wider map, with the
same harness and effort as ``pis-validate --suite quick``, and prints the error of each point:
the prediction (op sum with the in-model correction) and the op sum alone.

    python benchmarks/experiments/family_map.py --profile cpu.parquet --method dynamic-width \\
        --sparsity 0.25,0.5,0.75 --out family_map.csv

Default points: decode at (batch, context) (1, 256), (1, 4096), (4, 1024), (8, 512),
(16, 256), (16, 4096) and prefill at (batch, seq) (1, 128), (4, 256), on the CPU validation
model (``benchmarks/cpu-small.json``) in fp32. Takes about 3 minutes per sparsity on 2 cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from pis.simulator.api import Simulator
from pis.validate.run import EFFORT, run_configs
from pis.validate.suites import CPU_SMALL, Config

DECODE = [(1, 256), (1, 4096), (4, 1024), (8, 512), (16, 256), (16, 4096)]
PREFILL = [(1, 128), (4, 256)]


def configs(method: str, sparsities: list[float]) -> list[Config]:
    """The family at every sparsity and point, then the dense reference decoder at every point."""
    out = []
    for meth, ss, ref in [(method, sparsities, False), ("dense", [0.0], True)]:
        for s in ss:
            out += [Config(CPU_SMALL, meth, s, "decode", b, 1, c, reference=ref) for b, c in DECODE]
            out += [Config(CPU_SMALL, meth, s, "prefill", b, q, 0, reference=ref) for b, q in PREFILL]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="a CPU profile of this machine (calibrated with --model)")
    ap.add_argument("--method", default="dynamic-width")
    ap.add_argument("--sparsity", default="0.25,0.5,0.75", help="comma list")
    ap.add_argument("--out", type=Path, help="also write the report as CSV (refuses to overwrite)")
    args = ap.parse_args()
    if args.out is not None and args.out.exists():
        ap.error(f"{args.out} exists; pick another --out")
    sim = Simulator(args.profile)
    cfgs = configs(args.method, [float(s) for s in args.sparsity.split(",")])
    rep = run_configs(cfgs, sim, torch.device("cpu"), "fp32", EFFORT["quick"])
    if args.out is not None:
        rep.to_csv(args.out, index=False)
    cols = ["config", "measured_ms", "predicted_ms", "error_pct", "ops_error_pct", "in_model_factor", "status"]
    with pd.option_context("display.width", 200):
        print(rep[cols].round(2).to_string(index=False))
    fam = rep[(rep.method == args.method) & (rep.status == "ok")]
    print(f"\n{args.method}: median |error| {fam.error_pct.abs().median():.1f} %, "
          f"max {fam.error_pct.abs().max():.1f} % over {len(fam)} points")


if __name__ == "__main__":
    main()
