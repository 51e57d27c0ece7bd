"""The per-op model behind the estimator: exact hits, interpolation partitions, tile alignment.

One :class:`OpModel` per op kind of a profile holds its measured rows: an exact-hit index, one
:class:`~pis.simulator.interp.LogInterpolator` of log-utilization per partition (attention per
``head_dim`` and ``causal``, and on a CPU per side of grouped-query attention), and the width
alignment GEMM tile alignment rounds to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pis.profiles.schema import OPS
from pis.simulator.interp import LogInterpolator, Mesh

#: ``OpPrediction.source`` codes, and their names (index = code).
EXACT, INTERP, ROOFLINE = 0, 1, 2
SOURCE_NAMES: tuple[str, ...] = ("exact", "interp", "roofline")

#: Attention is interpolated separately for each value of these columns.
PARTITION_COLUMNS: tuple[str, ...] = ("head_dim", "causal")
#: ...and, on a CPU, separately for grouped-query shapes (heads > kv_heads) and the rest: there
#: SDPA with ``enable_gqa`` takes another path when query heads share K/V heads, whose cost does
#: not lie between the ungrouped shapes', so interpolation across the boundary misprices it. CUDA
#: kernels read shared K/V heads natively; there the split only takes neighbours away (measured
#: with benchmarks/experiments/attention_pairs_loo.py; docs/model.md). Name of that derived key.
GROUPED: str = "grouped"
#: How far a partition of the other regime counts when a query's own has no rows (between
#: causal's 100 and head_dim's log distance: the same regime at another head_dim is preferred).
GROUPED_WEIGHT = 10.0
#: Ops whose unmeasured N and K round up to the tile alignment, and the columns that do.
TILED_OPS: tuple[str, ...] = ("gemm", "gemm_2to4")
TILED_COLUMNS: tuple[str, ...] = ("n", "k")
#: Largest alignment tile alignment rounds to (a GPU GEMM tile edge).
MAX_ALIGN = 128
#: Neighbours of the k-NN fallback.
NEIGHBORS = 4


@dataclass
class OpRows:
    """Measured points of one op: integer shape keys (P, columns) and median latency (µs)."""

    keys: np.ndarray
    times: np.ndarray


@dataclass
class _Partition:
    rows: np.ndarray          # indices into the op's rows
    raw: np.ndarray           # their feature columns (integers), for range checks
    interp: LogInterpolator

    def __post_init__(self) -> None:
        self.lo, self.hi = self.raw.min(axis=0), self.raw.max(axis=0)


class OpModel:
    """Exact-hit index, per-partition interpolators and tile alignment of one op's rows."""

    def __init__(self, op: str, data: OpRows, sol: np.ndarray, tile_align: bool, split_gqa: bool = False,
                 meshes: "dict[tuple, Mesh] | None" = None) -> None:
        cols = OPS[op].columns
        self.op, self.data, self.tile_align = op, data, tile_align and op in TILED_OPS
        self.part_idx = [j for j, c in enumerate(cols) if c in PARTITION_COLUMNS]
        self.feat_idx = [j for j, c in enumerate(cols) if c not in PARTITION_COLUMNS]
        #: (heads, kv_heads) columns where an attention op's rows split into GQA and not (GROUPED)
        gqa_cols = split_gqa and {"heads", "kv_heads"} <= set(cols)
        self.heads_idx = (cols.index("heads"), cols.index("kv_heads")) if gqa_cols else None
        self.part_names = [cols[j] for j in self.part_idx] + ([GROUPED] if self.heads_idx else [])
        self.index = _KeyIndex(data.keys, data.times)
        util = np.log(sol / data.times)
        valid = np.isfinite(util)  # SOL = 0 (empty shapes) cannot be interpolated, only hit
        self.interpolated_rows = np.flatnonzero(valid)
        part_keys = self._part_keys(data.keys)
        self.parts: dict[tuple, _Partition] = {}
        for pk in {tuple(r) for r in part_keys[valid].tolist()}:
            rows = np.flatnonzero(valid & (part_keys == pk).all(axis=1))
            raw = data.keys[rows][:, self.feat_idx]
            mesh = (meshes or {}).get(pk)
            self.parts[pk] = _Partition(rows, raw, LogInterpolator(_log_features(raw), util[rows], NEIGHBORS, mesh=mesh))
        self.widths = {j: np.unique(data.keys[:, j]) for j, c in enumerate(cols) if c in TILED_COLUMNS}
        self.align = {cols[j]: _alignment(v) for j, v in self.widths.items()}

    def meshes(self) -> "dict[tuple, Mesh]":
        """The triangulation of every partition that has one (to keep, see :class:`Mesh`)."""
        return {pk: part.interp.mesh for pk, part in self.parts.items() if part.interp.mesh is not None}

    def predict(self, keys: np.ndarray, sol_fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kernel time, source and extrapolated flag of unique shape ``keys`` (U, columns)."""
        n = len(keys)
        time = np.full(n, np.nan)
        source = np.full(n, ROOFLINE, dtype=np.int8)
        extrap = self._out_of_range(keys)
        hit, value = self.index.lookup(keys)
        time[hit], source[hit] = value[hit], EXACT
        todo = ~hit
        if self.tile_align and todo.any():
            q = keys.copy()
            q[todo] = self._aligned(keys[todo])
            moved = todo & (q != keys).any(axis=1)
            hit_q, value_q = self.index.lookup(q)
            done = moved & hit_q
            time[done], source[done] = value_q[done], INTERP  # measured at the padded shape
            todo &= ~done
            keys = q
        if todo.any():
            t, inside = self._interpolate(keys[todo], sol_fn(keys[todo]))
            time[todo] = t
            source[todo] = np.where(inside, INTERP, ROOFLINE)
            extrap[todo] |= ~inside
        return time, source, extrap

    def _interpolate(self, keys: np.ndarray, sol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        util = np.empty(len(keys))
        inside = np.zeros(len(keys), dtype=bool)
        feats = _log_features(keys[:, self.feat_idx])
        for pk, sel in self._groups(keys):
            part = self.parts.get(pk)
            if part is None:  # unmeasured head_dim/causal/regime: borrow the nearest partition, flagged
                util[sel] = self._nearest_part(pk).interp(feats[sel])[0]
                continue
            util[sel], inside[sel] = part.interp(feats[sel])
        return sol / np.exp(util), inside

    def _part_keys(self, keys: np.ndarray) -> np.ndarray:
        """The partition key of each shape row: its :data:`PARTITION_COLUMNS`, then GROUPED."""
        pk = keys[:, self.part_idx]
        if self.heads_idx is None:
            return pk
        h, kv = self.heads_idx
        return np.column_stack([pk, (keys[:, h] > keys[:, kv]).astype(np.int64)])

    def _groups(self, keys: np.ndarray) -> list[tuple[tuple, np.ndarray | slice]]:
        """(partition key, row selector) for each partition the query rows fall in."""
        if not self.part_names:
            return [((), slice(None))]
        pk_all = self._part_keys(keys)
        uniq, inv = np.unique(pk_all, axis=0, return_inverse=True)
        return [(tuple(int(x) for x in u), inv.reshape(-1) == i) for i, u in enumerate(uniq)]

    def _nearest_part(self, pk: tuple) -> _Partition:
        weight = {"causal": 100.0, GROUPED: GROUPED_WEIGHT}

        def dist(other: tuple) -> float:
            # causal must match first, then the GQA regime, then the nearest head_dim in log space
            return sum(weight.get(name, 1.0) * (abs(np.log(max(a, 1)) - np.log(max(b, 1))) if name == "head_dim"
                                                else float(a != b))
                       for name, a, b in zip(self.part_names, pk, other))
        return self.parts[min(self.parts, key=dist)]

    def _out_of_range(self, keys: np.ndarray) -> np.ndarray:
        out = np.ones(len(keys), dtype=bool)  # an unmeasured partition is out of range
        feats = keys[:, self.feat_idx]
        for pk, sel in self._groups(keys):
            part = self.parts.get(pk)
            if part is not None:
                out[sel] = ((feats[sel] < part.lo) | (feats[sel] > part.hi)).any(axis=1)
        return out

    def _aligned(self, keys: np.ndarray) -> np.ndarray:
        q = keys.copy()
        for j, widths in self.widths.items():
            a = self.align[OPS[self.op].columns[j]]
            v = keys[:, j]
            up = -(-v // a) * a
            use = ~np.isin(v, widths) & (up != v) & (up <= widths[-1])
            q[use, j] = up[use]
        return q

    def aligns_when_held_out(self, keys: np.ndarray) -> np.ndarray:
        """Rows whose N or K no other row has and that tile alignment would move once held out."""
        out = np.zeros(len(keys), dtype=bool)
        for j, widths in self.widths.items():
            v = keys[:, j]
            vals, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
            for u in vals[counts == 1]:
                others = widths[widths != u]
                a = _alignment(others)
                moved = len(others) and u % a != 0 and -(-u // a) * a <= others[-1]
                out |= bool(moved) & (v == u)
        return out


class _KeyIndex:
    """Exact lookup of integer shape rows (binary search on their bytes)."""

    def __init__(self, keys: np.ndarray, values: np.ndarray) -> None:
        v = _void(keys)
        order = np.argsort(v, kind="stable")
        self.sorted, self.values = v[order], values[order]

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self.sorted) == 0 or len(keys) == 0:
            return np.zeros(len(keys), dtype=bool), np.full(len(keys), np.nan)
        q = _void(keys)
        pos = np.minimum(np.searchsorted(self.sorted, q), len(self.sorted) - 1)
        return self.sorted[pos] == q, self.values[pos]


def _void(keys: np.ndarray) -> np.ndarray:
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    return keys.view(np.dtype((np.void, 8 * keys.shape[1]))).reshape(-1)


def _log_features(raw: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(raw, 1).astype(np.float64))


def _alignment(widths: np.ndarray) -> int:
    """Largest power of two (<= MAX_ALIGN) dividing every measured width >= MAX_ALIGN."""
    big = widths[widths >= MAX_ALIGN]
    if not len(big):
        return 1
    g = int(np.gcd.reduce(big))
    return min(g & -g, MAX_ALIGN)


def outside_without_self(raw: np.ndarray) -> np.ndarray:
    """Per point: does it fall outside the range of the *other* points in some column?"""
    out = np.zeros(len(raw), dtype=bool)
    for j in range(raw.shape[1]):
        v = raw[:, j]
        lo, hi = v.min(), v.max()
        out |= ((v == lo) & ((v == lo).sum() == 1)) | ((v == hi) & ((v == hi).sum() == 1))
    return out


_MESH_FIELDS: tuple[str, ...] = ("points", "simplices", "transform", "facets", "shear")


def meshes_to_arrays(meshes: "dict[tuple, Mesh]") -> dict[str, np.ndarray]:
    """Partition meshes as flat named arrays (for :class:`pis.simulator.cache.DerivedCache`)."""
    out: dict[str, np.ndarray] = {}
    for i, (pk, mesh) in enumerate(sorted(meshes.items())):
        out[f"{i}.key"] = np.asarray(pk, dtype=np.int64)
        for f in _MESH_FIELDS:
            out[f"{i}.{f}"] = getattr(mesh, f)
    return out


def meshes_from_arrays(arrays: dict[str, np.ndarray]) -> "dict[tuple, Mesh]":
    """The inverse of :func:`meshes_to_arrays`."""
    n = len({k.split(".")[0] for k in arrays})
    return {tuple(int(v) for v in arrays[f"{i}.key"]): Mesh(*(arrays[f"{i}.{f}"] for f in _MESH_FIELDS))
            for i in range(n)}
