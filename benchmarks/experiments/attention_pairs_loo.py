"""How well does a profile price attention at a (query heads, K/V heads) pair it never measured?

Holds each measured (heads, kv_heads, head_dim) pair of ``attn_decode`` and ``attn_prefill``
out of the profile in turn (``Estimator.loo_errors(by="heads,kv_heads,head_dim")``, as
``pis-profile loo --by``), predicts its rows from the rest, and prints the median |error| per
pair, with the estimator's grouped-query split (CPU default) and without it. This is the case a
pruned model meets: static width cuts query heads and keeps K/V heads, so a profile calibrated
without ``--model`` holds none of the pruned model's pairs.

    python benchmarks/experiments/attention_pairs_loo.py --profile cpu-2core [--profile h100 ...]
"""

from __future__ import annotations

import argparse

import pandas as pd

from pis.profiles.shipped import resolve_profile
from pis.profiles.store import Profile, load_profile
from pis.simulator.estimator import Estimator

ATTENTION_OPS: tuple[str, ...] = ("attn_decode", "attn_prefill")
PAIR: list[str] = ["heads", "kv_heads", "head_dim"]


def pair_errors(profile: Profile, split_gqa: bool) -> pd.DataFrame:
    """Median and signed median error (%) of each held-out pair's rows, one row per op and pair."""
    est = Estimator(profile, split_gqa=split_gqa)
    out = []
    for op in ATTENTION_OPS:
        df = est.loo_errors(op, by=",".join(PAIR))
        df["pct"] = df["rel_error"] * 100.0
        g = df.groupby(PAIR)["pct"]
        out.append(pd.DataFrame({"op": op, "rows": g.size(), "median_abs_pct": g.apply(lambda e: e.abs().median()),
                                 "median_pct": g.median()}).reset_index())
    return pd.concat(out, ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="append", required=True, help="profile file or shipped name (repeatable)")
    args = ap.parse_args()
    for name in args.profile:
        prof = load_profile(resolve_profile(name))
        both = pair_errors(prof, split_gqa=False).merge(
            pair_errors(prof, split_gqa=True), on=["op", *PAIR, "rows"], suffixes=("_one", "_split"))
        print(f"== {name}: median |error| per held-out pair, one partition vs grouped-query split")
        print(both.round(1).to_string(index=False))
        for op in ATTENTION_OPS:
            sel = both[both["op"] == op]
            print(f"{op}: median over pairs {sel['median_abs_pct_one'].median():.1f} % -> "
                  f"{sel['median_abs_pct_split'].median():.1f} %, worst pair {sel['median_abs_pct_one'].max():.1f} % -> "
                  f"{sel['median_abs_pct_split'].max():.1f} %")


if __name__ == "__main__":
    main()
