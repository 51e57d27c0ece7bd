"""Does the in-model factor depend on width? Time dense decoders at full and half width.

The in-model factor (pis.simulator.inmodel) is fitted to dense decoders of one width. This times
the same whole decoders (both executors, the quick grid's prefill and decode points) at full
width and with heads and FFN halved, divides each by its op sum predicted from PROFILE, and
prints the two factors side by side. A ratio above 1 means that narrow (width-pruned) models
lose more in the model than the dense factor says. Two runs on the 2-core CPU, 2026-11-26:
on average 4–7 % more. In decode it is 10–39 % more at context 4096 (where cache ops that
width pruning does not shrink weigh more) and about 10 % less at context 256.

    python benchmarks/experiments/ffn_width_in_model.py --profile cpu.parquet [--model benchmarks/cpu-small.json]
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from pis.calibrate import benches
from pis.calibrate.decoder_points import decoder_points
from pis.calibrate.grid import model_pairs
from pis.models import ModelSpec
from pis.profiles.schema import DECODER_OPS
from pis.simulator.api import Simulator
from pis.simulator.inmodel.rows import OP_FOR_KV_CACHE, decoder_sums

KV_FOR_OP = {op: kv for kv, op in OP_FOR_KV_CACHE.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True, help="a CPU profile of this machine (file or shipped name)")
    ap.add_argument("--model", default="benchmarks/cpu-small.json")
    args = ap.parse_args()
    est = Simulator(args.profile).estimator
    _, _, dims = model_pairs(args.model)
    rows = []
    for width, shrink in (("full", 1), ("half", 2)):
        d = dict(dims, heads=dims["heads"] // shrink, ffn=dims["ffn"] // shrink)
        for p in decoder_points("quick", "cpu", d):
            s = p.shape_dict
            if p.op not in DECODER_OPS or s["ffn"] != d["ffn"]:
                continue  # the dense decoders at this width only (not the narrow-FFN, routed, framework rows)
            measured_us = benches.build(p.op, s, torch.float32, torch.device("cpu")).timed()[0] * 1e3
            spec = ModelSpec("w", hidden=s["hidden"], ffn=s["ffn"], layers=s["layers"], heads=s["heads"],
                             kv_heads=s["kv_heads"], head_dim=s["head_dim"], vocab=1)
            phase = "prefill" if s["causal"] else "decode"
            length = s["q_len"] if s["causal"] else s["kv_len"]
            pred = decoder_sums(est, spec, phase, s["batch"], length, KV_FOR_OP[p.op]).op_sum_us[0]
            rows.append(dict(op=p.op, phase=phase, batch=s["batch"], length=length, width=width,
                             factor=measured_us / pred))
    table = pd.DataFrame(rows).pivot_table(index=["op", "phase", "batch", "length"], columns="width",
                                           values="factor")
    table["half_over_full"] = table["half"] / table["full"]
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"\nhalf-width factor / full-width factor: mean {table['half_over_full'].mean():.3f}, "
          f"max {table['half_over_full'].max():.3f} over {len(table)} points ({', '.join(DECODER_OPS)})")


if __name__ == "__main__":
    main()
