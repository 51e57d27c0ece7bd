"""Build the default quality table (``data/quality_default.csv``) from published accuracies.

Input: ``data/published_quality.csv`` (a copy of the project's collected table; see
``data/QUALITY.md`` for its sources). Output: one row per (CLI family, sparsity) with the
quality loss in percent, plus provenance; and ``data/quality_sources.csv``, every published row
with the family and sparsity it was mapped to, or why it was left out.

Rules (also in ``data/QUALITY.md``):

1. Family: the published ``family`` label maps to a CLI family through ``FAMILY_MAP``; labels
   with no CLI equivalent (``dynamic_sublayer``) are left out.
2. Sparsity: ``sparsity`` / 100, except static-depth rows whose definition names a layer count
   (``7/32 layers``): the CLI's static-depth sparsity is the fraction of layers removed, so the
   layer fraction is used. Rows without a numeric sparsity (``speedup 1.24x``) are left out.
   Sparsities are binned to the nearest ``BIN`` (5 %) so that 24.5 %, 25 % and 25.5 % pool.
3. Loss: relative loss of the average accuracy against the *same row's* dense baseline,
   ``(dense_avg - avg_acc) / dense_avg * 100`` (recomputed; rows without numbers are left out).
4. Retraining: rows that retrain the backbone (fine-tuning, LoRA, distillation, joint training)
   are left out by default (``--include-retrained`` keeps them), so every family is compared
   post-training (routers, masks, adapters on a frozen backbone are kept).
5. Conflicts: the median over all remaining rows in a (family, sparsity bin) (``--agg min``:
   the best published method instead).
6. Monotonicity: loss cannot fall as sparsity grows, so per family the medians are replaced by
   their isotonic (non-decreasing) fit, weighted by the number of rows, anchored at 0 % loss at
   sparsity 0 (the unpruned model) and floored at 0 (a pruned model that scores above its dense
   baseline counts as no loss). The raw median stays in ``median_loss_pct``.

Quantized weights (``data/published_quantization.csv``, sources in ``data/QUANTIZATION_SOURCES.md``):
each weight format's loss is one row ``dense`` at sparsity 0 with its ``weights``, the median over
that format's rows (rule 5), floored at 0 (rule 6). int4 keeps only group-wise rows (``g128``,
``w4a16``), the kernel ``--group-size 128`` prices; per-channel int4 is another quantizer and is
left out, as are int8 rows that quantize activations too (W8A8: the int8 format is weight-only). Pruned-and-quantized points combine the two losses
(:meth:`pis.simulator.quality.QualityModel.loss`).

Run ``python -m pis.simulator.quality_build`` to rebuild; ``--check`` fails if the shipped
files differ from a fresh build (the tests do the same).
"""

from __future__ import annotations

import re
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

#: Published family label -> CLI family (None: no CLI family; the reason is recorded).
FAMILY_MAP: dict[str, str | None] = {
    "static_depth": "static-depth",
    "static_depth(sublayer blocks)": "static-depth",
    "static_depth (32->16 layers)": "static-depth",
    "dynamic_depth": "dynamic-depth",
    "dynamic_depth(FFN-only routing)": "dynamic-depth",
    "dynamic_depth (per-prompt routed)": "dynamic-depth",
    "dynamic_depth (token-wise, router+adapter)": "dynamic-depth",
    "static_width": "static-width",
    "static_width(hidden-dim)": "static-width-hidden",
    "static_width(hidden-dim/slicing)": "static-width-hidden",
    "2:4_semi_structured": "semi-structured",
    "low_rank(SVD)": "low-rank",
    # Minitron-Width prunes hidden *and* MLP width at once: neither CLI width family.
    "static_width (hidden 4096->3072, MLP 14336->9216)": None,
    # Routing only the attention or only the MLP of whole blocks, with no skip ratio published.
    "dynamic_sublayer(Attn)": None,
    "dynamic_sublayer(MLP)": None,
}

BIN = 0.05
_LAYERS = re.compile(r"(\d+)\s*/\s*(\d+)\s*layers")
_RETRAINED = re.compile(r"^yes|lora|jointly|distill|\bkd\b", re.IGNORECASE)

#: Published quantization label -> weight format.
QUANT_MAP: dict[str, str] = {"quant_int8": "int8", "quant_int4": "int4", "quant_fp8": "fp8"}
_PER_CHANNEL = re.compile(r"per-channel", re.IGNORECASE)
_INT8_ACTIVATIONS = re.compile(r"W8A8", re.IGNORECASE)

DATA = "data"
INPUT = "published_quality.csv"
QUANT_INPUT = "published_quantization.csv"
OUTPUT = "quality_default.csv"
SOURCES = "quality_sources.csv"


def _sparsity(family: str | None, definition: str, value: object) -> float | None:
    try:
        pct = float(value)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(pct):
        return None
    m = _LAYERS.search(str(definition))
    if family == "static-depth" and m:
        return int(m.group(1)) / int(m.group(2))
    return pct / 100.0


def map_rows(published: pd.DataFrame, include_retrained: bool = False) -> pd.DataFrame:
    """Every published row with its CLI family, sparsity bin, loss, and exclusion reason (or '')."""
    out = published.copy()
    out["cli_family"] = [FAMILY_MAP.get(f, None) for f in out["family"]]
    out["sparsity_frac"] = [_sparsity(f, d, v) for f, d, v in
                            zip(out["cli_family"], out["sparsity_def"], out["sparsity"])]
    acc = pd.to_numeric(out["avg_acc"], errors="coerce")
    dense = pd.to_numeric(out["dense_avg"], errors="coerce")
    out["loss_pct"] = (dense - acc) / dense * 100.0
    frac = pd.to_numeric(out["sparsity_frac"], errors="coerce")
    out["sparsity_bin"] = (np.round(frac / BIN) * BIN).round(4)
    reasons = []
    for _, r in out.iterrows():
        if r["family"] not in FAMILY_MAP:
            reasons.append(f"unknown family label {r['family']!r}")
        elif pd.isna(r["cli_family"]):
            reasons.append("no matching CLI family")
        elif pd.isna(r["sparsity_frac"]):
            reasons.append("no numeric sparsity")
        elif pd.isna(r["loss_pct"]):
            reasons.append("no accuracy published")
        elif not include_retrained and _RETRAINED.search(str(r["finetuned"])):
            reasons.append("backbone retrained")
        else:
            reasons.append("")
    out["excluded"] = reasons
    return out


def _isotonic(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    from sklearn.isotonic import IsotonicRegression

    # Losses below 0 (pruned beats dense, within benchmark noise) count as no loss.
    return IsotonicRegression(increasing=True, y_min=0.0).fit(x, y, sample_weight=w).predict(x)


def build_table(mapped: pd.DataFrame, agg: str = "median") -> pd.DataFrame:
    """Aggregate the kept rows per (family, sparsity bin) and make each family monotone."""
    kept = mapped[mapped["excluded"] == ""]
    rows = []
    for (fam, s), g in kept.groupby(["cli_family", "sparsity_bin"], sort=True):
        rows.append(dict(method=fam, sparsity=float(s),
                         median_loss_pct=float(g["loss_pct"].agg(agg)), n_rows=len(g),
                         sources=";".join(sorted(set(g["src"].astype(str)))),
                         methods=";".join(sorted(set(g["method"].astype(str))))))
    table = pd.DataFrame(rows)
    fitted = []
    for fam, g in table.groupby("method", sort=True):
        g = g.sort_values("sparsity")
        # The unpruned model (s = 0) loses nothing: an anchor with the weight of every row.
        x = np.r_[0.0, g["sparsity"].to_numpy()]
        y = np.r_[0.0, g["median_loss_pct"].to_numpy()]
        w = np.r_[float(g["n_rows"].sum()), g["n_rows"].to_numpy(float)]
        g = g.assign(quality_loss_pct=np.round(_isotonic(x, y, w)[1:], 2))
        fitted.append(g)
    table = pd.concat(fitted, ignore_index=True)
    table["median_loss_pct"] = table["median_loss_pct"].round(2)
    cols = ["method", "sparsity", "quality_loss_pct", "median_loss_pct", "n_rows", "sources", "methods"]
    return table[cols].sort_values(["method", "sparsity"], ignore_index=True)


def map_quantized(published: pd.DataFrame) -> pd.DataFrame:
    """Every published quantization row with its weight format, loss, and exclusion reason (or '')."""
    out = published.copy()
    out["weights"] = [QUANT_MAP.get(f, None) for f in out["family"]]
    acc = pd.to_numeric(out["avg_acc"], errors="coerce")
    dense = pd.to_numeric(out["dense_avg"], errors="coerce")
    out["loss_pct"] = (dense - acc) / dense * 100.0
    reasons = []
    for _, r in out.iterrows():
        if r["weights"] is None:
            reasons.append(f"unknown family label {r['family']!r}")
        elif pd.isna(r["loss_pct"]):
            reasons.append("no accuracy published")
        elif r["weights"] == "int4" and _PER_CHANNEL.search(str(r["method"])):
            reasons.append("per-channel int4 (the int4 kernel groups by --group-size)")
        elif r["weights"] == "int8" and _INT8_ACTIVATIONS.search(str(r["method"])):
            reasons.append("int8 activations too (the int8 format is weight-only)")
        else:
            reasons.append("")
    out["excluded"] = reasons
    return out


def quantized_table(mapped: pd.DataFrame, agg: str = "median") -> pd.DataFrame:
    """One ``dense`` row per weight format: the aggregated loss of its kept rows, floored at 0."""
    kept = mapped[mapped["excluded"] == ""]
    rows = []
    for w, g in kept.groupby("weights", sort=True):
        med = float(g["loss_pct"].agg(agg))
        rows.append(dict(method="dense", weights=w, sparsity=0.0, quality_loss_pct=round(max(med, 0.0), 2),
                         median_loss_pct=round(med, 2), n_rows=len(g),
                         sources=";".join(sorted(set(g["src"].astype(str)))),
                         methods=";".join(sorted(set(g["method"].astype(str))))))
    return pd.DataFrame(rows)


def sources_table(mapped: pd.DataFrame) -> pd.DataFrame:
    """The provenance file: each published row, where it went, or why it was left out."""
    cols = ["method", "family", "model", "sparsity", "finetuned", "src", "verif",
            "cli_family", "sparsity_bin", "loss_pct", "excluded"]
    out = mapped[cols].copy()
    out["loss_pct"] = out["loss_pct"].round(2)
    return out


def build(input_path: Path, include_retrained: bool = False, agg: str = "median",
          quant_path: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(quality table, provenance table) built from a published_quality.csv and, when given, a
    published_quantization.csv (its rows add one ``dense`` row per weight format)."""
    mapped = map_rows(pd.read_csv(input_path), include_retrained)
    table = build_table(mapped, agg).assign(weights="native")
    sources = sources_table(mapped).assign(weights="native")
    if quant_path is not None:
        quant = map_quantized(pd.read_csv(quant_path))
        table = pd.concat([table, quantized_table(quant, agg)], ignore_index=True)
        q = quant.assign(cli_family="dense", sparsity_bin=0.0, loss_pct=quant["loss_pct"].round(2))
        sources = pd.concat([sources, q[list(sources.columns)]], ignore_index=True)
    cols = ["method", "weights", "sparsity", "quality_loss_pct", "median_loss_pct", "n_rows", "sources", "methods"]
    return table[cols], sources


def _csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.4g", lineterminator="\n")


def main(argv: list[str] | None = None) -> int:
    """Rebuild (or with ``--check`` verify) the shipped quality files."""
    import argparse

    data = Path(str(files("pis.simulator").joinpath(DATA)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=data / INPUT)
    ap.add_argument("--quant-input", type=Path, default=data / QUANT_INPUT)
    ap.add_argument("--out-dir", type=Path, default=data)
    ap.add_argument("--include-retrained", action="store_true")
    ap.add_argument("--agg", choices=("median", "min"), default="median")
    ap.add_argument("--check", action="store_true", help="fail if the files differ from a fresh build")
    args = ap.parse_args(argv)
    table, sources = build(args.input, args.include_retrained, args.agg, args.quant_input)
    outputs = {args.out_dir / OUTPUT: _csv(table), args.out_dir / SOURCES: _csv(sources)}
    if args.check:
        stale = [str(p) for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
        for p in stale:
            print(f"stale: {p}", file=sys.stderr)
        return 1 if stale else 0
    for p, text in outputs.items():
        p.write_text(text)
        print(f"wrote {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
