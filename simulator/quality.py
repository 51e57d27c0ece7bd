"""Quality loss of each pruning family as a function of sparsity, from a small table.

The table has one row per (method, sparsity) with ``quality_loss_pct`` (relative loss of
accuracy, in percent). The default ships with the package (``data/quality_default.csv``, built
from published accuracies by ``quality_build.py``; see ``data/QUALITY.md``); users pass their
own with ``--quality FILE.csv``. Between a method's points the loss is interpolated with a
shape-preserving (monotone) PCHIP curve; beyond its last point it is unknown (NaN, flagged),
never extrapolated. ``dense`` loses nothing; every other method loses 0 at sparsity 0 unless
the table says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from pis.errors import PisError

COLUMNS = ("method", "sparsity", "quality_loss_pct")
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
    """Per-method sorted (sparsity, loss) points, ``s = 0`` anchor included."""

    points: Mapping[str, tuple[np.ndarray, np.ndarray]]
    source: str

    def methods(self) -> tuple[str, ...]:
        """Methods with quality data (``dense`` always has it)."""
        return tuple(sorted(set(self.points) | {"dense"}))

    def has(self, method: str) -> bool:
        """Whether ``method`` has quality data."""
        return method == "dense" or method in self.points

    def max_sparsity(self, method: str) -> float:
        """Largest sparsity with data (``inf`` for dense, ``nan`` without data)."""
        if method == "dense":
            return float("inf")
        return float(self.points[method][0][-1]) if method in self.points else float("nan")

    def loss(self, method: str, sparsity: object) -> np.ndarray:
        """Quality loss (%) at ``sparsity``; NaN beyond the method's range or without data."""
        s = np.atleast_1d(np.asarray(sparsity, dtype=np.float64))
        if method == "dense":
            return np.zeros_like(s)
        if method not in self.points:
            return np.full_like(s, np.nan)
        x, y = self.points[method]
        inside = (s >= x[0] - _TOL) & (s <= x[-1] + _TOL)
        out = np.full_like(s, np.nan)
        if len(x) == 1:
            out[inside] = y[0]
            return out
        from scipy.interpolate import PchipInterpolator

        out[inside] = PchipInterpolator(x, y, extrapolate=False)(np.clip(s[inside], x[0], x[-1]))
        return out

    def annotate(self, df: pd.DataFrame) -> pd.DataFrame:
        """Copy of a sweep result with ``quality_loss_pct`` and ``quality_flag`` columns."""
        out = df.copy()
        loss = np.full(len(df), np.nan)
        flag = np.full(len(df), "", dtype=object)
        for method, idx in out.groupby("method", sort=False).indices.items():
            if not self.has(method):
                flag[idx] = FLAG_NO_DATA
                continue
            loss[idx] = self.loss(method, out["sparsity"].to_numpy()[idx])
            flag[idx] = np.where(np.isnan(loss[idx]), FLAG_OUT_OF_RANGE, "")
        out["quality_loss_pct"], out["quality_flag"] = loss, flag
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
    """Validate a quality table (``method, sparsity, quality_loss_pct``) and build the model."""
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
    table = pd.DataFrame({"method": methods, "sparsity": sparsity, "loss": loss})
    dup = table.duplicated(["method", "sparsity"], keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise PisError(f"{source} line {i + 2}: duplicate point ({table['method'].iloc[i]}, "
                       f"sparsity {sparsity[i]:g})")
    dense = table[table["method"] == "dense"]
    if (dense["loss"] != 0).any():
        raise PisError(f"{source}: dense must have quality_loss_pct 0 (it is the reference)")
    points: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for method, g in table[table["method"] != "dense"].groupby("method", sort=True):
        g = g.sort_values("sparsity")
        x, y = g["sparsity"].to_numpy(), g["loss"].to_numpy()
        if x[0] > 0:  # sparsity 0 is the unpruned model
            x, y = np.r_[0.0, x], np.r_[0.0, y]
        points[str(method)] = (x, y)
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
           "FLAG_OUT_OF_RANGE", "FLAG_NO_DATA", "COLUMNS"]
