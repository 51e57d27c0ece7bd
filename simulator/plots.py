"""Figures for the acceleration–quality study (needs the ``plot`` extra: matplotlib).

matplotlib is imported only when a figure is drawn. Figures are drawn on an Agg canvas without
touching pyplot's global backend, and saved as PNG and SVG with a fixed SVG hash salt and no
date or software version in the metadata, so the same data gives the same files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pis.errors import PisError

_SVG_META = {"Date": None, "Creator": None}
_PNG_META = {"Software": None}


def _figure(width: float = 7.0, height: float = 4.5) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PisError("plots need matplotlib: pip install 'pruninginfersim[plot]'") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` deterministically; return the paths."""
    import matplotlib

    stem = Path(stem)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.hashsalt": "pis", "svg.fonttype": "path"}):
        fig.savefig(paths[0], format="png", metadata=_PNG_META)
        fig.savefig(paths[1], format="svg", metadata=_SVG_META)
    return paths


def _colors(methods: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


#: Marker of each weight format (native weights: circles).
_MARKERS = {"fp8": "d", "int8": "s", "int4": "^"}


def _who(df: pd.DataFrame) -> str:
    return "candidate" if "candidate" in df else "method"


def _style(df: pd.DataFrame, who: str) -> tuple[str, str]:
    """(family, marker) of the contender ``who``: colour by family, marker by weight format."""
    row = df.iloc[0]
    return str(row["method"]), _MARKERS.get(str(row.get("weights", "")), "o")


def _title(df: pd.DataFrame) -> str:
    parts = []
    for col, fmt in (("model", "{}"), ("phase", "{}"), ("batch", "B={}"), ("seq_len", "S={}"),
                     ("context_len", "ctx={}")):
        if col not in df:
            continue
        if col == "seq_len" and "phase" in df and (df["phase"] != "prefill").all():
            continue
        if col == "context_len" and "phase" in df and (df["phase"] != "decode").all():
            continue
        vals = sorted(df[col].unique().tolist())
        parts.append(fmt.format(vals[0] if len(vals) == 1 else "/".join(map(str, vals))))
    return " ".join(parts)


def pareto_figure(points: pd.DataFrame, front: pd.DataFrame | None = None,
                  study_bands: pd.DataFrame | None = None, title: str | None = None) -> Any:
    """Speedup vs quality loss of one scenario: each contender's curve (solid, realized; colour by
    family, marker by weight format), its theoretical bound (dashed, ``theoretical_speedup``),
    the Pareto frontier (black steps), and optionally the study's bands as shaded spans."""
    ok = points[np.isfinite(points["quality_loss_pct"].to_numpy(float))]
    who = _who(ok)
    methods = sorted(ok["method"].unique(), key=lambda m: (m != "dense", m))
    contenders = sorted(ok[who].unique(), key=lambda m: (not str(m).startswith("dense"), m))
    crowded = len(contenders) > 10  # the legend goes beside the axes instead of over the curves
    fig = _figure(10.0 if crowded else 7.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    colors = _colors(methods)
    if study_bands is not None:
        for b in study_bands.itertuples(index=False):
            c = colors.get(b.family, "0.8")
            ax.axvspan(b.loss_from, b.loss_to, color=c, alpha=0.08, lw=0)
            ax.text((b.loss_from + b.loss_to) / 2, 0.99, f"study: {b.family}", rotation=90,
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=7, color=c)
    for m in contenders:
        g = ok[ok[who] == m].sort_values("sparsity")
        family, marker = _style(g, who)
        if family == "dense":
            ax.plot(g["quality_loss_pct"].iloc[:1], g["speedup"].iloc[:1], "k" + (marker if marker != "o" else "*"),
                    ms=10 if marker == "o" else 7, label=m)
            continue
        ax.plot(g["quality_loss_pct"], g["speedup"], marker + "-", ms=3, lw=1.2, color=colors[family], label=m)
        if "theoretical_speedup" in g:
            ax.plot(g["quality_loss_pct"], g["theoretical_speedup"], "--", lw=1, color=colors[family], alpha=0.7)
    if front is not None and len(front):
        f = front.sort_values("quality_loss_pct")
        xmax = max(float(ok["quality_loss_pct"].max()), float(f["quality_loss_pct"].max()))
        ax.step(np.r_[f["quality_loss_pct"], xmax], np.r_[f["speedup"], f["speedup"].iloc[-1]],
                where="post", color="k", lw=1.5, alpha=0.8, label="Pareto frontier")
    ax.plot([], [], "k--", lw=1, label="theoretical bound (dashed)")
    ax.set_xlabel("quality loss (% relative accuracy)")
    ax.set_ylabel("speedup over dense (×)")
    ax.set_title(title if title is not None else _title(points), fontsize=10)
    ax.grid(True, alpha=0.3)
    if crowded:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 if len(contenders) < 24 else 2)
    else:
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    return fig


def breakdown_figure(points: pd.DataFrame, sparsity: float = 0.5, title: str | None = None) -> Any:
    """Stacked latency bars by op category (``t_<category>_ms`` columns of a breakdown sweep):
    dense and every family at the sparsity nearest ``sparsity``."""
    cats = sorted(c for c in points.columns if c.startswith("t_") and c.endswith("_ms"))
    if not cats:
        raise PisError("latency breakdown needs a sweep with breakdown=True (t_<category>_ms columns)")
    rows = []
    who = _who(points)
    for m, g in points.groupby(who, sort=False):
        i = (g["sparsity"] - (0.0 if g["method"].iloc[0] == "dense" else sparsity)).abs().to_numpy().argmin()
        rows.append(g.iloc[i])
    bars = pd.DataFrame(rows).sort_values(who, key=lambda s: s.map(lambda m: (not str(m).startswith("dense"), m)))
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    labels = [m if f == "dense" else f"{m}\ns={s:.2g}" for m, f, s in zip(bars[who], bars["method"], bars["sparsity"])]
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    colors = _colors([c[2:-3] for c in cats])
    for c in cats:
        v = bars[c].to_numpy(float)
        ax.bar(x, v, bottom=bottom, label=c[2:-3], color=colors[c[2:-3]], width=0.7)
        bottom += v
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("latency (ms)")
    ax.set_title(title if title is not None else f"latency breakdown, {_title(points)}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def speedup_figure(points: pd.DataFrame, title: str | None = None) -> Any:
    """Realized speedup (solid) against the theoretical bound (dashed) over sparsity, one panel
    per phase and one line per family."""
    phases = list(dict.fromkeys(points["phase"])) if "phase" in points else [None]
    fig = _figure(5.0 * len(phases), 4.0)
    who = _who(points)
    methods = sorted(m for m in points["method"].unique() if m != "dense")
    contenders = sorted(m for m in points.loc[points["method"] != "dense", who].unique())
    colors = _colors(methods)
    for i, phase in enumerate(phases):
        ax = fig.add_subplot(1, len(phases), i + 1)
        df = points if phase is None else points[points["phase"] == phase]
        for m in contenders:
            g = df[df[who] == m].sort_values("sparsity")
            if not len(g):
                continue
            family, marker = _style(g, who)
            ax.plot(g["sparsity"], g["speedup"], marker + "-", ms=2, color=colors[family], label=m)
            ax.plot(g["sparsity"], g["theoretical_speedup"], "--", lw=1, color=colors[family])
        ax.set_title(title if title is not None else f"{_title(df)}: realized (solid) vs bound (dashed)",
                     fontsize=9)
        ax.set_xlabel("sparsity")
        ax.set_ylabel("speedup (x)")
        ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def write_plots(points: pd.DataFrame, front: pd.DataFrame, out_dir: str | Path,
                study_bands: pd.DataFrame | None = None, sparsity: float = 0.5,
                force: bool = False) -> list[Path]:
    """One Pareto and (with ``t_*_ms`` columns) one breakdown figure per scenario, PNG + SVG.

    Existing files are an error unless ``force``; ``study_bands`` shade prefill figures only.
    """
    from pis.simulator.pareto import scenario_columns

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PisError(f"--plot: {out_dir} is not a folder")
    cols = scenario_columns(points)
    jobs = []
    for key, g in points.groupby(cols, sort=True) if cols else [((), points)]:
        key = key if isinstance(key, tuple) else (key,)
        tag = "_".join(f"{c}-{v}" for c, v in zip(cols, key) if points[c].nunique() > 1 or c == "phase")
        tag = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in tag) or "all"
        f = front
        for c, v in zip(cols, key):
            f = f[f[c] == v]
        prefill = "phase" in g and bool((g["phase"] == "prefill").all())
        jobs.append((out / f"pareto_{tag}", lambda g=g, f=f, sb=study_bands if prefill else None:
                     pareto_figure(g, f, sb)))
        if any(c.startswith("t_") for c in g.columns):
            jobs.append((out / f"breakdown_{tag}", lambda g=g: breakdown_figure(g, sparsity)))
    if not force:
        for stem, _ in jobs:
            for p in (stem.with_suffix(".png"), stem.with_suffix(".svg")):
                if p.exists():
                    raise PisError(f"{p} exists; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for stem, draw in jobs:
        paths += save(draw(), stem)
    return paths


__all__ = ["pareto_figure", "breakdown_figure", "speedup_figure", "write_plots", "save"]
