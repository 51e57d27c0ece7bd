"""Acceleration–quality trade-off: the Pareto frontier and which family wins per quality budget.

Pure functions on a sweep result annotated with ``quality_loss_pct`` (see
:meth:`pis.simulator.quality.QualityModel.annotate`). Rows without a finite loss or speedup
take no part. Each *scenario* (model, phase, batch, seq_len, context_len: whatever of these the
frame has) gets its own frontier and bands.

The contenders are the frame's ``candidate`` column when it has one (:func:`with_candidates`:
a family with a weight format, ``static-depth+int4``), else its ``method`` column.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

SCENARIO = ("model", "phase", "batch", "seq_len", "context_len")

#: The study's prefill finding (arXiv 2606.09080, "Beyond FLOPs"): the family with the best
#: speedup within each band of allowed quality loss (percent).
STUDY_BANDS_PREFILL = pd.DataFrame({
    "family": ["static-depth", "dynamic-depth", "static-width"],
    "loss_from": [0.0, 5.0, 17.0],
    "loss_to": [4.0, 16.0, 26.0],
})

BAND_COLUMNS = ("family", "loss_from", "loss_to", "best_speedup", "best_sparsity")


#: The column naming a contender (family and weight format) when sweeps of several formats meet.
CANDIDATE = "candidate"


def with_candidates(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``candidate`` column: ``method+weights`` when it holds several weight
    formats (``static-depth+int4``, ``dense+bf16``), else the method alone."""
    if "weights" not in df or df["weights"].nunique() <= 1:
        return df.assign(**{CANDIDATE: df["method"].astype(str)})
    return df.assign(**{CANDIDATE: df["method"].astype(str) + "+" + df["weights"].astype(str)})


def family_of(candidate: str) -> str:
    """The pruning family of a contender (``static-depth+int4`` -> ``static-depth``)."""
    return str(candidate).split("+", 1)[0]


def _who(df: pd.DataFrame) -> str:
    return CANDIDATE if CANDIDATE in df else "method"


def scenario_columns(df: pd.DataFrame, by: Sequence[str] | None = None) -> list[str]:
    """The columns that separate scenarios: ``by`` or the :data:`SCENARIO` columns present."""
    return [c for c in (SCENARIO if by is None else by) if c in df.columns]


def _usable(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    ok = np.isfinite(df[x].to_numpy(float)) & np.isfinite(df[y].to_numpy(float))
    return df[ok]


def _ordered(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Best first: lower loss, then higher speedup, then dense, method name, lower sparsity."""
    key = pd.DataFrame({
        "y": df[y].to_numpy(float), "x": -df[x].to_numpy(float),
        "dense": (df["method"] != "dense").to_numpy(), "method": df[_who(df)].to_numpy(),
        "s": df["sparsity"].to_numpy(float) if "sparsity" in df else 0.0,
    }, index=df.index)
    order = key.sort_values(["y", "x", "dense", "method", "s"], kind="mergesort").index
    return df.loc[order]


def frontier(df: pd.DataFrame, x: str = "speedup", y: str = "quality_loss_pct",
             by: Sequence[str] | None = None) -> pd.DataFrame:
    """Design points no other point beats: higher ``x`` (speedup) and lower ``y`` (loss).

    A point is kept when its speedup is strictly above every point with lower or equal loss
    that precedes it, so of equal points only the first in the tie order (dense first, then
    method name, then lower sparsity) is kept. Returned sorted by scenario, then loss.
    """
    cols = scenario_columns(df, by)
    parts = []
    for _, g in (df.groupby(cols, sort=True, dropna=False) if cols else [(None, df)]):
        g = _ordered(_usable(g, x, y), x, y)
        xs = g[x].to_numpy(float)
        best = np.maximum.accumulate(np.r_[-np.inf, xs])[:-1]
        parts.append(g[xs > best])
    out = pd.concat(parts) if parts else df.iloc[:0]
    return out.reset_index(drop=True)


def best_by_family(df: pd.DataFrame, x: str = "speedup", y: str = "quality_loss_pct") -> pd.DataFrame:
    """Per family of one scenario, its own frontier: the best speedup as a step function of loss."""
    parts = [frontier(g, x, y, by=()) for _, g in df.groupby(_who(df), sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else df.iloc[:0]


def _bands_one(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    # The overall frontier already is "the best speedup at each allowed loss": its points, in
    # loss order, each win from their own loss up to the next frontier point's loss.
    front = frontier(df, x, y, by=())
    rows: list[dict] = []
    losses = front[y].to_numpy(float)
    for i, r in enumerate(front.itertuples(index=False)):
        loss_to = losses[i + 1] if i + 1 < len(front) else np.inf
        fam = getattr(r, _who(front))
        if rows and rows[-1]["family"] == fam:
            rows[-1].update(loss_to=loss_to, best_speedup=getattr(r, x),
                            best_sparsity=getattr(r, "sparsity"))
        else:
            rows.append(dict(family=fam, loss_from=losses[i], loss_to=loss_to,
                             best_speedup=getattr(r, x), best_sparsity=getattr(r, "sparsity")))
    return pd.DataFrame(rows, columns=list(BAND_COLUMNS))


def bands(df: pd.DataFrame, x: str = "speedup", y: str = "quality_loss_pct",
          by: Sequence[str] | None = None) -> pd.DataFrame:
    """Which family gives the best speedup over which interval of allowed quality loss.

    For an allowed loss L, the best achievable speedup of a family is the largest speedup of its
    points with loss <= L (a step function of L); the winning family is the argmax. One row per
    maximal interval ``[loss_from, loss_to)`` with the same winner, with the best speedup
    reached inside it (at its upper end) and that point's sparsity; the last interval is
    open (``loss_to = inf``). Scenario columns are kept in front.
    """
    cols = scenario_columns(df, by)
    parts = []
    for key, g in (df.groupby(cols, sort=True, dropna=False) if cols else [((), df)]):
        b = _bands_one(g, x, y)
        key = key if isinstance(key, tuple) else (key,)
        for c, v in zip(cols, key):
            b.insert(cols.index(c), c, v)
        parts.append(b)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols + list(BAND_COLUMNS))


def compare_with_study(found: pd.DataFrame, study: pd.DataFrame = STUDY_BANDS_PREFILL) -> pd.DataFrame:
    """For each study band, which simulated families win over it and for how much of it.

    ``found`` is the :func:`bands` table of one scenario. ``simulated`` lists the winners
    overlapping the study band as ``family [from-to]``; ``agreement`` is the fraction of the
    study band where the simulated winner is the study's family (in any weight format).
    """
    rows = []
    for s in study.itertuples(index=False):
        width = s.loss_to - s.loss_from
        same, parts = 0.0, []
        for b in found.itertuples(index=False):
            lo, hi = max(s.loss_from, b.loss_from), min(s.loss_to, b.loss_to)
            if hi <= lo:
                continue
            parts.append(f"{b.family} [{lo:.3g}-{hi:.3g}]")
            same += (hi - lo) if family_of(b.family) == s.family else 0.0
        rows.append(dict(study_family=s.family, loss_from=s.loss_from, loss_to=s.loss_to,
                         simulated="; ".join(parts) or "-",
                         agreement=same / width if width > 0 else np.nan))
    return pd.DataFrame(rows)


#: Columns of :func:`efficiency`.
EFFICIENCY_COLUMNS = ("method", "sparsity", "speedup", "theoretical_speedup", "efficiency", "flops_ratio")


def efficiency(df: pd.DataFrame, at: float = 0.5, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Realized ÷ theoretical speedup of every family at the sparsity nearest ``at``, per scenario.

    ``efficiency`` = speedup / theoretical_speedup: 1 where a family delivers its speed-of-light
    gain. The study's finding to compare with: static depth comes closest to its bound where the
    phase is memory-bound (decode at small batch); fine-grained and dynamic families lose to
    gathers, routers, odd GEMM shapes and launch overheads.
    """
    cols = scenario_columns(df, by)
    rows = []
    for key, g in (df.groupby(cols, sort=True, dropna=False) if cols else [((), df)]):
        key = key if isinstance(key, tuple) else (key,)
        for m, f in g[g["method"] != "dense"].groupby(_who(g), sort=True):
            r = f.iloc[int((f["sparsity"] - at).abs().to_numpy().argmin())]
            rows.append({**dict(zip(cols, key)), "method": m, "sparsity": r["sparsity"], "speedup": r["speedup"],
                         "theoretical_speedup": r["theoretical_speedup"],
                         "efficiency": r["speedup"] / r["theoretical_speedup"], "flops_ratio": r["flops_ratio"]})
    return pd.DataFrame(rows, columns=cols + list(EFFICIENCY_COLUMNS))


__all__ = ["with_candidates", "family_of", "CANDIDATE", "frontier", "efficiency", "bands", "best_by_family", "compare_with_study", "scenario_columns",
           "STUDY_BANDS_PREFILL", "BAND_COLUMNS", "SCENARIO"]
