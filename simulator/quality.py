"""Quality loss of each pruning family as a function of sparsity, from a small table.

The table has one row per (method, sparsity) with ``quality_loss_pct`` (relative loss of
accuracy, in percent). The default ships with the package (``data/quality_default.csv``, built
from published accuracies by ``quality_build.py``; see ``data/QUALITY.md``); users pass their
own with ``--quality FILE.csv``. Between a method's points the loss is interpolated with a
shape-preserving (monotone) PCHIP curve; beyond its last point it is unknown (NaN, flagged),
never extrapolated. ``dense`` loses nothing; every other method loses 0 at sparsity 0 unless
the table says otherwise.

Quantized weights: an optional ``weights`` column (``native`` when absent or empty; bf16, fp16
and fp32 name it too) keys rows by weight format. A ``dense`` row of a quantized format gives
what quantizing alone loses. A pruned-and-quantized point takes its own rows when the table has
them (a user's measurements); otherwise its loss combines the two as independent relative
losses, ``1 - (1 - l_prune)(1 - l_quant)`` (in fractions), and ``quality_rule`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from pis.errors import PisError
from pis.pruned import weight_format

COLUMNS = ("method", "sparsity", "quality_loss_pct")
#: ``quality_rule`` values of :meth:`QualityModel.annotate`: the table's own rows, or the
#: combination of a pruning loss and a quantization loss.
RULE_TABLE = "table"
RULE_COMBINED = "pruning x quantization"
DEFAULT_NAME = "data/quality_default.csv"

#: ``quality_flag`` values of :meth:`QualityModel.annotate`.
FLAG_OUT_OF_RANGE = "out of quality range"
FLAG_NO_DATA = "no quality data"

_TOL = 1e-9


def known_methods() -> tuple[str, ...]:
    """The CLI's pruning family names."""
    from pis.simulator.pruning import FAMILIES

    return tuple(FAMILIES)


@dataclass(frozen=True)
class QualityModel:
    """Sorted (sparsity, loss) points per (method, weight format), ``s = 0`` anchor included."""

    points: Mapping[tuple[str, str], tuple[np.ndarray, np.ndarray]]
    source: str

    def methods(self, weights: str = "native") -> tuple[str, ...]:
        """Methods with quality data at ``weights`` (``dense`` always has it natively)."""
        w = weight_format(weights)
        return tuple(sorted(m for m in {m for m, _ in self.points} | {"dense"} if self.has(m, w)))

    def has(self, method: str, weights: str = "native") -> bool:
        """Whether ``method`` with ``weights`` has quality data (its own, or combined)."""
        w = weight_format(weights)
        if (method, w) in self.points:
            return True
        native = method == "dense" or (method, "native") in self.points
        return native and (w == "native" or ("dense", w) in self.points)

    def max_sparsity(self, method: str, weights: str = "native") -> float:
        """Largest sparsity with data (``inf`` for dense, ``nan`` without data)."""
        w = weight_format(weights)
        if not self.has(method, w):
            return float("nan")
        if method == "dense":
            return float("inf")
        key = (method, w) if (method, w) in self.points else (method, "native")
        return float(self.points[key][0][-1])

    def _curve(self, key: tuple[str, str], s: np.ndarray) -> np.ndarray:
        x, y = self.points[key]
        inside = (s >= x[0] - _TOL) & (s <= x[-1] + _TOL)
        out = np.full_like(s, np.nan)
        if len(x) == 1:
            out[inside] = y[0]
            return out
        from scipy.interpolate import PchipInterpolator

        out[inside] = PchipInterpolator(x, y, extrapolate=False)(np.clip(s[inside], x[0], x[-1]))
        return out

    def rule(self, method: str, weights: str = "native") -> str:
        """How :meth:`loss` answers ``method`` with ``weights``: :data:`RULE_TABLE` or :data:`RULE_COMBINED`."""
        w = weight_format(weights)
        return RULE_TABLE if w == "native" or (method, w) in self.points else RULE_COMBINED

    def loss(self, method: str, sparsity: object, weights: str = "native") -> np.ndarray:
        """Quality loss (%) at ``sparsity``; NaN beyond the method's range or without data.

        A quantized format without rows of its own for ``method`` combines the native pruning
        loss with the format's ``dense`` loss: ``100 (1 - (1 - lp/100)(1 - lq/100))``."""
        s = np.atleast_1d(np.asarray(sparsity, dtype=np.float64))
        w = weight_format(weights)
        if not self.has(method, w):
            return np.full_like(s, np.nan)
        if (method, w) in self.points:
            return self._curve((method, w), s) if method != "dense" or w != "native" else np.zeros_like(s)
        prune = np.zeros_like(s) if method == "dense" else self._curve((method, "native"), s)
        if w == "native":
            return prune
        quant = float(self.points[("dense", w)][1][0])
        return 100.0 * (1.0 - (1.0 - prune / 100.0) * (1.0 - quant / 100.0))

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        """Copy of a sweep result with ``quality_loss_pct``, ``quality_flag`` and ``quality_rule``
        columns (the ``weights`` column, when present, picks each row's format)."""
        out = df.copy()
        loss = np.full(len(df), np.nan)
        flag = np.full(len(df), "", dtype=object)
        rule = np.full(len(df), "", dtype=object)
        weights = out["weights"] if "weights" in out else pd.Series("native", index=out.index)
        keys = pd.DataFrame({"method": out["method"].to_numpy(), "weights": weights.to_numpy()})
        for (method, w), idx in keys.groupby(["method", "weights"], sort=False).indices.items():
            if not self.has(method, w):
                flag[idx] = FLAG_NO_DATA
                continue
            loss[idx] = self.loss(method, out["sparsity"].to_numpy()[idx], w)
            flag[idx] = np.where(np.isnan(loss[idx]), FLAG_OUT_OF_RANGE, "")
            rule[idx] = self.rule(method, w)
        out["quality_loss_pct"], out["quality_flag"], out["quality_rule"] = loss, flag, rule
        return out


def _numbers(frame: pd.DataFrame, column: str, where: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise PisError(f"{where} line {i + 2}: {column} {frame[column].iloc[i]!r} is not a finite number")
    return values


def from_frame(frame: pd.DataFrame, source: str = "table",
               known: Iterable[str] | None = None) -> QualityModel:
    """Validate a quality table (``method, sparsity, quality_loss_pct``, optionally ``weights``)
    and build the model."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise PisError(f"{source}: missing column(s) {', '.join(missing)} "
                       f"(need {', '.join(COLUMNS)})")
    if frame.empty:
        raise PisError(f"{source}: no rows")
    methods = frame["method"].fillna("").astype(str).str.strip()
    empty = np.flatnonzero(methods.to_numpy() == "")
    if empty.size:
        raise PisError(f"{source} line {int(empty[0]) + 2}: empty method")
    known = tuple(known_methods() if known is None else known)
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise PisError(f"{source}: unknown method {unknown[0]!r}; known: {', '.join(known)}")
    sparsity = _numbers(frame, "sparsity", source)
    loss = _numbers(frame, "quality_loss_pct", source)
    bad = np.flatnonzero((sparsity < 0) | (sparsity >= 1))
    if bad.size:
        i = int(bad[0])
        raise PisError(f"{source} line {i + 2}: sparsity {sparsity[i]:g} is outside [0, 1)")
    weights = []
    given = frame["weights"].fillna("").astype(str) if "weights" in frame.columns else [""] * len(frame)
    for i, w in enumerate(given):
        try:
            weights.append(weight_format(w) if w.strip() else "native")
        except PisError:
            raise PisError(f"{source} line {i + 2}: weights {w!r} is not native, bf16, fp16, fp32, fp8, "
                           "int8 or int4") from None
    table = pd.DataFrame({"method": methods, "weights": weights, "sparsity": sparsity, "loss": loss})
    dup = table.duplicated(["method", "weights", "sparsity"], keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise PisError(f"{source} line {i + 2}: duplicate point ({table['method'].iloc[i]}, "
                       f"{table['weights'].iloc[i]} weights, sparsity {sparsity[i]:g})")
    dense = table[(table["method"] == "dense") & (table["weights"] == "native")]
    if (dense["loss"] != 0).any():
        raise PisError(f"{source}: dense must have quality_loss_pct 0 (it is the reference)")
    quant_dense = table[(table["method"] == "dense") & (table["weights"] != "native")]
    if (quant_dense["sparsity"] != 0).any():
        raise PisError(f"{source}: a quantized dense row must have sparsity 0 (dense is unpruned)")
    points: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for (method, w), g in table.groupby(["method", "weights"], sort=True):
        if method == "dense" and w == "native":
            continue
        g = g.sort_values("sparsity")
        x, y = g["sparsity"].to_numpy(), g["loss"].to_numpy()
        if x[0] > 0 and w == "native":  # sparsity 0 is the unpruned model
            x, y = np.r_[0.0, x], np.r_[0.0, y]
        points[(str(method), str(w))] = (x, y)
    return QualityModel(points, source)


def default_path() -> Path:
    """Path of the shipped default quality table."""
    return Path(str(files("pis.simulator").joinpath(DEFAULT_NAME)))


def load_quality(path: str | Path | None = None, known: Iterable[str] | None = None) -> QualityModel:
    """Load a user's quality CSV, or the shipped default when ``path`` is None."""
    p = default_path() if path is None else Path(path)
    where = "default quality table" if path is None else f"quality file {p}"
    if not p.is_file():
        raise PisError(f"{where} does not exist" if not p.exists() else f"{where} is not a file")
    try:
        frame = pd.read_csv(p, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise PisError(f"{where} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise PisError(f"{where} is not a readable CSV: {err}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return from_frame(frame, where, known)


__all__ = ["QualityModel", "load_quality", "from_frame", "default_path", "known_methods",
           "FLAG_OUT_OF_RANGE", "FLAG_NO_DATA", "COLUMNS", "RULE_TABLE", "RULE_COMBINED"]
