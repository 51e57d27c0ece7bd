"""Latency of one op call from a measured profile: exact hit → interpolation → roofline.

The query order follows AIConfigurator's, and every prediction says which path answered it:

1. **exact** (``EXACT``): the shape was measured; its median latency is returned.
2. **interpolation** (``INTERP``): the shape lies inside the convex hull of measured shapes of the
   same op (and, for attention, the same ``head_dim`` and ``causal``, and on a CPU the same side of
   grouped-query attention, :data:`GROUPED`). The estimator interpolates the *log-utilization*
   ``log(SOL / measured)`` — smoother across shapes than raw time — piecewise-linearly in log-shape
   space: GEMM/top-k over ``(log m, log n, log k)``, attention over ``log`` of batch, q_len,
   kv_len, heads, kv_heads (constant ones dropped), memory-bound ops over ``log numel``; latency =
   SOL / utilization.
3. **roofline** (``ROOFLINE``): outside the hull, the utilization of the nearest measured shapes
   (distance-weighted k-NN in log-shape space) divides the speed of light; flagged
   ``extrapolated``. An op the profile lacks entirely is an error (:class:`MissingOpError`)
   unless ``allow_roofline=True``: then SOL ÷ the profile's median GEMM utilization.

``extrapolated`` is also set whenever any shape dimension lies outside the calibrated range.

Speed of light: ``SOL = max(flops / peak_flops, bytes / peak_bandwidth)`` (counts from
:mod:`pis.profiles.schema`; peaks from the metadata, else derived from the rows: ``peak_source``).

GEMM tile alignment (``tile_align``): GPUs run GEMMs in tiles, so a 4032-wide GEMM costs about
what a 4096-wide one does. With tile alignment on, a GEMM whose N (or K) was never measured is
priced at N rounded up to the alignment the measured widths share (largest power of two up to
128 dividing every measured width >= 128). ``"auto"`` turns it on for CUDA profiles only: CPU
BLAS kernels have no comparable tile granularity (compare with ``pis-profile loo --by n``).

Launch floor: CUDA timings (events) exclude the CPU launch, so an eager kernel costs at least one:
``time_us = max(kernel_us, launch_us_per_op)``. CPU timings already include dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from pis.errors import MissingOpError, PisError, ProfileError
from pis.profiles.schema import (MEMORY_OPS, OPS, QUANTIZED_GEMM, STATUS_OK, WHOLE_DECODER_OPS, OpKind, op_bytes,
                                 op_flops)
from pis.profiles.store import Profile
from pis.simulator.opmodel import (EXACT, INTERP, ROOFLINE, SOURCE_NAMES, TILED_OPS, OpModel, OpRows,
                                   meshes_from_arrays, meshes_to_arrays, outside_without_self)

if TYPE_CHECKING:
    import pandas as pd

    from pis.simulator.cache import DerivedCache

#: GEMMs with at most this many rows stream their weights: memory-bound, used for the bandwidth.
SMALL_M = 16


@dataclass(frozen=True)
class OpPrediction:
    """Predicted latency of one op call per queried shape (arrays of the broadcast shape)."""

    #: what one call costs in the simulation (kernel time, with the launch floor on CUDA)
    time_us: np.ndarray
    #: ``EXACT`` / ``INTERP`` / ``ROOFLINE`` (int8), see ``SOURCE_NAMES``
    source: np.ndarray
    #: outside the calibrated range of some shape dimension, or answered by the roofline path
    extrapolated: np.ndarray
    #: the kernel's own time, without the launch floor
    kernel_us: np.ndarray


class Estimator:
    """Predicts op latencies from one profile (the rows of the profile's dtype).

    Args:
        profile: a loaded profile (see :func:`pis.profiles.store.load_profile`).
        allow_roofline: price ops the profile lacks by roofline instead of raising.
        tile_align: ``"auto"`` (on for CUDA profiles), ``"align"``/``True`` or ``"none"``/``False``.
        launch_floor: apply ``max(kernel, overhead)``; ``None`` means on for CUDA profiles.
        name: how error messages name the profile (default: its device name and dtype).
        split_gqa: interpolate grouped-query attention apart from the rest (:data:`GROUPED`);
            ``None`` means on for CPU profiles.
    """

    def __init__(self, profile: Profile, *, allow_roofline: bool = False,
                 tile_align: str | bool = "auto", launch_floor: bool | None = None,
                 name: str | None = None, split_gqa: bool | None = None,
                 cache: "DerivedCache | None" = None) -> None:
        self.profile = profile
        #: where the op models' meshes are kept between processes (None: nowhere)
        self.cache = cache
        meta = profile.meta
        self.dtype = _profile_dtype(profile)
        self.device_kind = str(meta.get("device_kind", "")).lower()
        self.is_cuda = self.device_kind in ("cuda", "gpu")
        self.name = name or f"{meta.get('device_name', '<unnamed device>')} ({self.dtype})"
        self.allow_roofline = allow_roofline
        self.tile_align = _tile_align_mode(tile_align, self.is_cuda)
        self.launch_floor = self.is_cuda if launch_floor is None else bool(launch_floor)
        self.split_gqa = not self.is_cuda if split_gqa is None else bool(split_gqa)

        self._rows = _rows_by_op(profile, self.dtype)
        self.peak_flops, self.peak_bandwidth, self.peak_source = self._peaks()
        ov = self._rows.get("overhead")
        #: median launch/dispatch overhead per op in µs (None: the profile has no overhead rows)
        self.launch_us_per_op: float | None = float(np.median(ov.times)) if ov is not None else None
        glue = self._rows.get("host_glue")
        #: median host time per loop-glue dispatch in µs (None: not measured)
        self.glue_us_per_dispatch: float | None = float(np.median(glue.times)) if glue is not None else None
        #: utilization assumed for ops the profile lacks (median GEMM utilization)
        self.default_utilization = self._default_utilization()
        self._models: dict[str, OpModel] = {}

    # --- public API ---------------------------------------------------------------------

    def ops(self) -> list[str]:
        """Ops with measured rows of this estimator's dtype."""
        return sorted(self._rows)

    def speed_of_light_us(self, op: str, shape: Mapping[str, object]) -> np.ndarray:
        """Roofline time of one call: max(FLOPs / peak FLOP/s, bytes / peak bytes/s), in µs."""
        kind = _kind(op)
        flops = op_flops(op, shape)
        nbytes = op_bytes(op, shape, self.dtype)
        return np.maximum(flops / (self.peak_flops * kind.peak_scale), nbytes / self.peak_bandwidth) * 1e6

    def predict(self, op: str, shape: Mapping[str, object]) -> OpPrediction:
        """Latency of ``op`` for every shape in ``shape`` (column name -> array, broadcast).

        Identical shapes are predicted once. Raises :class:`MissingOpError` when the profile
        has no measured rows of ``op`` and the estimator does not allow roofline fallback.
        Ops added to the schema later are answered by their documented stand-in
        (:data:`STAND_INS`) on profiles measured before them; a stand-in that is another kernel
        flags its predictions ``extrapolated``.
        """
        if op not in self._rows and op in QUANTIZED_OPS_BASE and QUANTIZED_OPS_BASE[op] in self._rows:
            return self._quantized_roofline(op, shape)
        if op not in self._rows and op in STAND_INS:
            alt = STAND_INS[op]
            if op == "attn_block_sparse":
                return self._block_sparse_stand_in(shape)
            if alt.op in self._rows:
                pred = self.predict(alt.op, {c: alt.scale * np.asarray(v) if c == "numel" else v
                                             for c, v in shape.items()})
                if alt.flagged:
                    pred = OpPrediction(pred.time_us, pred.source, np.ones_like(pred.extrapolated), pred.kernel_us)
                return pred
        kind = _kind(op)
        keys, out_shape = _shape_matrix(kind, shape)
        uniq, inverse = _unique_rows(keys)
        kernel, source, extrap = self._predict_unique(op, uniq)
        kernel, source, extrap = (a[inverse].reshape(out_shape) for a in (kernel, source, extrap))
        time = kernel
        if self.launch_floor and self.launch_us_per_op is not None:
            time = np.maximum(kernel, self.launch_us_per_op)
        return OpPrediction(time_us=time, source=source, extrapolated=extrap, kernel_us=kernel)

    def _quantized_roofline(self, op: str, shape: Mapping[str, object]) -> OpPrediction:
        """A GEMM with quantized weights the profile never timed: its speed of light divided by
        the utilization the profile's native GEMM reaches at the same shape (fewer weight bytes
        pay off where the GEMM streams its weights, not where it computes); flagged."""
        base = QUANTIZED_OPS_BASE[op]
        native = self.predict(base, {c: shape[c] for c in OPS[base].columns})
        full = {c: np.asarray(shape[c]) for c in OPS[op].columns}
        scale = self.speed_of_light_us(op, full) / self.speed_of_light_us(base, {c: full[c] for c in OPS[base].columns})
        kernel = native.kernel_us * scale
        time = np.maximum(kernel, self.launch_us_per_op) if self.launch_floor and self.launch_us_per_op else kernel
        return OpPrediction(time_us=time, source=np.full(np.shape(kernel), ROOFLINE, dtype=np.int8),
                            extrapolated=np.ones(np.shape(kernel), dtype=bool), kernel_us=kernel)

    def _block_sparse_stand_in(self, shape: Mapping[str, object]) -> OpPrediction:
        """Tile-skipping block-sparse attention where the profile never timed it: a prompt as the
        causal attention scaled by the kept fraction of its tiles, a decode step as a dense
        attention over the kept keys (whole blocks); flagged ``extrapolated``."""
        cols = ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal", "sparsity_pct")
        a = dict(zip(cols, np.broadcast_arrays(*[np.asarray(shape[c]) for c in cols])))
        keep = 1.0 - a["sparsity_pct"].astype(np.float64) / 100.0
        causal = a["causal"].astype(bool)
        blocks = np.ceil(a["kv_len"] / SPARSE_BLOCK - 1e-9)
        kept_kv = np.minimum(a["kv_len"], np.maximum(1, np.ceil(keep * blocks - 1e-9)) * SPARSE_BLOCK)
        base = {c: a[c] for c in cols[:-1]}
        time = np.empty(a["batch"].shape)
        kernel, source, extrap = time.copy(), np.empty(time.shape, np.int8), np.ones(time.shape, bool)
        for is_prefill, op in ((True, "attn_prefill"), (False, "attn_decode")):
            sel = causal == is_prefill
            if not sel.any():
                continue
            sub = {c: v[sel] for c, v in base.items()}
            if not is_prefill:
                sub["kv_len"] = kept_kv[sel].astype(np.int64)
            p = self.predict(op, sub)
            scale = keep[sel] if is_prefill else 1.0
            time[sel], kernel[sel], source[sel] = p.time_us * scale, p.kernel_us * scale, p.source
        return OpPrediction(time_us=time, source=source, extrapolated=extrap, kernel_us=kernel)

    def op_time(self, op: str, shape: Mapping[str, object]) -> np.ndarray:
        """What one call of ``op`` costs in the simulation (``predict(...).time_us``)."""
        return self.predict(op, shape).time_us

    def alignment(self, op: str = "gemm") -> dict[str, int]:
        """The width alignment unmeasured N and K round up to (1: alignment has no effect)."""
        return dict(self._model(op).align) if self._model(op) is not None else {}

    def loo_errors(self, op: str = "gemm", by: str | None = None) -> "pd.DataFrame":
        """Leave-one-out relative error of every measured point of ``op``.

        Each point is predicted from all the others (its exact hit disabled). With ``by`` a
        shape column, every *value* of that column is held out at once instead (e.g.
        ``by="n"``: predict each measured width from the other widths), which is what tests
        tile alignment; with comma-separated columns, every combination of their values
        (``by="heads,kv_heads,head_dim"``: each attention head pair from the other pairs, as a
        static-width model meets it). Summary: :func:`loo_summary` (also in ``df.attrs["summary"]``).
        """
        data = self._rows.get(op)
        if data is None:
            raise MissingOpError(f"profile {self.name} has no measured {op!r} rows to cross-validate")
        kind = OPS[op]
        if not kind.columns:
            raise PisError(f"op {op!r} has no shape to interpolate over")
        by_cols = [] if by is None else [c.strip() for c in by.split(",")]
        for c in by_cols:
            if c not in kind.columns:
                raise PisError(f"--by {c!r} is not a shape column of {op} ({', '.join(kind.columns)})")
        sol = self._sol_keys(op, data.keys)
        pred = np.full(len(data.keys), np.nan)
        source = np.full(len(data.keys), ROOFLINE, dtype=np.int8)
        extrap = np.zeros(len(data.keys), dtype=bool)
        if by is None:
            model = self._model(op)
            slow = np.zeros(len(data.keys), dtype=bool)
            for part in model.parts.values():
                if len(part.rows) < 2:
                    slow[part.rows] = True
                    continue
                y, inside = part.interp.leave_one_out()
                pred[part.rows] = sol[part.rows] / np.exp(y)
                source[part.rows] = np.where(inside, INTERP, ROOFLINE)
                extrap[part.rows] = ~inside | outside_without_self(part.raw)
            slow |= model.aligns_when_held_out(data.keys) if self.tile_align else False
            slow &= np.isin(np.arange(len(data.keys)), model.interpolated_rows)
            groups = [np.array([i]) for i in np.flatnonzero(slow)]
        else:
            _, which = np.unique(data.keys[:, [kind.columns.index(c) for c in by_cols]], axis=0, return_inverse=True)
            which = which.reshape(-1)
            groups = [np.flatnonzero(which == g) for g in range(which.max() + 1)]
        for held in groups:
            keep = np.ones(len(data.keys), dtype=bool)
            keep[held] = False
            if not keep.any():
                continue
            sub = self._new_model(op, OpRows(data.keys[keep], data.times[keep]), sol[keep])
            t, s, e = sub.predict(data.keys[held], lambda q: self._sol_keys(op, q))
            pred[held], source[held], extrap[held] = t, np.where(s == EXACT, INTERP, s), e
        import pandas as pd

        df = pd.DataFrame(data.keys, columns=list(kind.columns))
        df["measured_us"] = data.times
        df["predicted_us"] = pred
        df["rel_error"] = pred / data.times - 1.0
        df["source"] = pd.Categorical.from_codes(source, categories=list(SOURCE_NAMES))
        df["extrapolated"] = extrap
        df = df[np.isfinite(df["rel_error"])].reset_index(drop=True)
        df.attrs["summary"] = loo_summary(df)
        return df

    # --- internals ----------------------------------------------------------------------

    def _model(self, op: str) -> "OpModel | None":
        if op not in self._models:
            data = self._rows.get(op)
            if data is None or not OPS[op].columns:
                return None
            name = f"mesh-{op}-t{int(self.tile_align)}-g{int(self.split_gqa)}"
            kept = self.cache.load_arrays(name) if self.cache is not None else None
            model = OpModel(op, data, self._sol_keys(op, data.keys), self.tile_align, split_gqa=self.split_gqa,
                            meshes=meshes_from_arrays(kept) if kept is not None else None)
            if self.cache is not None and kept is None:
                self.cache.save_arrays(name, meshes_to_arrays(model.meshes()))
            self._models[op] = model
        return self._models[op]

    def _new_model(self, op: str, data: OpRows, sol: np.ndarray) -> "OpModel":
        """An op model of ``data`` with this estimator's options (the full rows, or a held-out subset)."""
        return OpModel(op, data, sol, self.tile_align, split_gqa=self.split_gqa)

    def _sol_keys(self, op: str, keys: np.ndarray) -> np.ndarray:
        cols = OPS[op].columns
        return self.speed_of_light_us(op, {c: keys[:, j] for j, c in enumerate(cols)})

    def _predict_unique(self, op: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(keys)
        data = self._rows.get(op)
        if data is None:
            if not self.allow_roofline:
                raise MissingOpError(
                    f"profile {self.name} has no measured {op!r} rows; measure them (pis-calibrate "
                    f"on a device that supports {op}) or pass --allow-roofline to estimate them as "
                    f"speed of light / the profile's median GEMM utilization")
            t = self._sol_keys(op, keys) / self.default_utilization
            return t, np.full(n, ROOFLINE, dtype=np.int8), np.ones(n, dtype=bool)
        if not OPS[op].columns:  # the overhead op: one scalar
            return (np.full(n, float(np.median(data.times))), np.full(n, EXACT, dtype=np.int8),
                    np.zeros(n, dtype=bool))
        return self._model(op).predict(keys, lambda q: self._sol_keys(op, q))

    def _peaks(self) -> tuple[float, float, dict[str, str]]:
        meta = self.profile.meta
        source: dict[str, str] = {}
        achieved_flops, achieved_bw = [], []
        for op, data in self._rows.items():
            kind = OPS[op]
            if not kind.columns:
                continue
            shape = {c: data.keys[:, j] for j, c in enumerate(kind.columns)}
            secs = data.times * 1e-6
            if op == "gemm" or "gemm" not in self._rows:
                achieved_flops.append(op_flops(op, shape) / secs)
            if op in MEMORY_OPS or (op in TILED_OPS and op != "gemm_2to4"):
                bw = op_bytes(op, shape, self.dtype) / secs
                achieved_bw.append(bw if op in MEMORY_OPS else bw[data.keys[:, 0] <= SMALL_M])
        peaks = []
        for key, achieved, what in (("peak_flops", achieved_flops, "max achieved GEMM FLOP/s"),
                                    ("peak_bandwidth", achieved_bw,
                                     "max achieved bytes/s of memory-bound ops and small-M GEMMs")):
            value = meta.get(key)
            if isinstance(value, (int, float)) and value > 0:
                peaks.append(float(value))
                source[key] = "metadata" + (f" ({meta['peak_source']})" if meta.get("peak_source") else "")
                continue
            vals = np.concatenate(achieved) if achieved else np.empty(0)
            vals = vals[np.isfinite(vals) & (vals > 0)]
            if not len(vals):
                raise ProfileError(f"profile {self.name} has no {key} in its metadata and no rows "
                                   f"to derive it from ({what})")
            peaks.append(float(vals.max()))
            source[key] = f"profile ({what})"
        return peaks[0], peaks[1], source

    def _default_utilization(self) -> float:
        utils = []
        for op, data in self._rows.items():
            if OPS[op].columns and (op == "gemm" or "gemm" not in self._rows):
                u = self._sol_keys(op, data.keys) / data.times
                utils.append(u[np.isfinite(u) & (u > 0)])
        vals = np.concatenate(utils) if utils else np.empty(0)
        return float(np.median(vals)) if len(vals) else 1.0


def loo_summary(df: "pd.DataFrame") -> dict[str, float]:
    """Median, p90 and max |relative error| in % of a :meth:`Estimator.loo_errors` table."""
    err = np.abs(df["rel_error"].to_numpy()) * 100.0
    out: dict[str, float] = {"n": int(len(err))}
    if len(err):
        out.update(median_abs_pct=float(np.median(err)), p90_abs_pct=float(np.percentile(err, 90)),
                   max_abs_pct=float(err.max()))
    for name in SOURCE_NAMES[1:]:
        sel = (df["source"] == name).to_numpy()
        out[f"n_{name}"] = int(sel.sum())
        if sel.any():
            out[f"median_abs_pct_{name}"] = float(np.median(err[sel]))
    return out


# --- helpers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class StandIn:
    """The measured op that prices an op a profile lacks: ``op`` over ``scale`` times the elements;
    ``flagged`` when it is another kernel (its predictions are marked extrapolated)."""

    op: str
    flagged: bool
    scale: float = 1.0


#: Ops newer than some profiles, and the measured op that prices them there. A KV-cache append
#: is a copy of the cache, as an index_select of as many rows is (not flagged). Graph
#: execution's fused kernels fall back to their eager counterparts, a fill to an add of a third
#: as many elements (an add moves three times a fill's bytes), graph-replayed 2:4 to eager 2:4
#: (whose timing holds host work), and block-sparse attention to dense attention over the kept
#: tiles (:meth:`Estimator._block_sparse_stand_in`).
STAND_INS: dict[str, StandIn] = {
    "kv_concat": StandIn("gather", flagged=False),
    "fill": StandIn("add", flagged=True, scale=1.0 / 3.0),
    "rmsnorm_fused": StandIn("rmsnorm", flagged=True),
    "rope_fused": StandIn("rope", flagged=True),
    "kv_write": StandIn("gather", flagged=True),
    "gemm_2to4_graph": StandIn("gemm_2to4", flagged=True),
    "attn_block_sparse": StandIn("attn_prefill", flagged=True),
}
#: Key-block size of the block-sparse attention kernels (the study's 64-key tiles).
SPARSE_BLOCK = 64
#: GEMMs with quantized weights, and the native GEMM whose utilization prices them by roofline
#: on a profile that never timed them (:meth:`Estimator._quantized_roofline`).
QUANTIZED_OPS_BASE: dict[str, str] = {q: "gemm" for q in QUANTIZED_GEMM.values()}


def _kind(op: str) -> OpKind:
    if op not in OPS:
        raise PisError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    return OPS[op]


def _tile_align_mode(tile_align: str | bool, is_cuda: bool) -> bool:
    if isinstance(tile_align, bool):
        return tile_align
    modes = {"auto": is_cuda, "align": True, "none": False}
    if tile_align not in modes:
        raise PisError(f"tile_align must be one of {', '.join(modes)}, got {tile_align!r}")
    return modes[tile_align]


def _profile_dtype(profile: Profile) -> str:
    dtype = profile.meta.get("dtype")
    if dtype:
        return str(dtype)
    c = profile.columns()
    found = sorted({str(v) for v, st in zip(c["dtype"], c["status"]) if v is not None and st == STATUS_OK})
    if len(found) != 1:
        raise ProfileError(f"profile has no dtype in its metadata and rows of {len(found)} dtypes")
    return found[0]


def _rows_by_op(profile: Profile, dtype: str) -> dict[str, OpRows]:
    """Measured rows of ``dtype`` per op; unusable rows dropped, duplicates resolved.

    Duplicates (an invalid profile; ``pis-profile validate`` reports them) keep the point with
    more repeats, as ``pis-profile merge`` does.
    """
    c = profile.columns()
    # Whole-decoder rows are not an op the graph executes; the in-model correction reads them.
    usable = (c["status"] == STATUS_OK) & (c["dtype"] == dtype)
    out: dict[str, OpRows] = {}
    for op in sorted(o for o in OPS if o not in WHOLE_DECODER_OPS):
        cols = list(OPS[op].columns)
        t = c["median_us"]
        sel = usable & (c["op"] == op) & ~np.isnan(t) & (t > 0)
        for col in cols:
            sel &= ~np.isnan(c[col])
        idx = np.flatnonzero(sel)
        if not len(idx):
            continue
        idx = idx[np.argsort(-c["repeats"][idx], kind="stable")]  # more repeats first (NaN last)
        keys = np.column_stack([c[col][idx] for col in cols]).astype(np.int64) if cols else \
            np.empty((len(idx), 0), np.int64)
        if cols:  # keep the first of duplicate shapes
            first = np.sort(np.unique(keys, axis=0, return_index=True)[1])
            idx, keys = idx[first], keys[first]
        out[op] = OpRows(keys, t[idx].astype(np.float64))
    return out


def _shape_matrix(kind: OpKind, shape: Mapping[str, object]) -> tuple[np.ndarray, tuple]:
    """Broadcast the op's shape columns into an integer (N, columns) matrix."""
    missing = [c for c in kind.columns if c not in shape]
    if missing:
        raise ValueError(f"shape of {kind.name} lacks {', '.join(missing)} (needs {', '.join(kind.columns)})")
    arrays = np.broadcast_arrays(*[np.asarray(shape[c]) for c in kind.columns]) if kind.columns else []
    out_shape = arrays[0].shape if arrays else ()
    n = int(np.prod(out_shape))
    mat = np.empty((n, len(kind.columns)), dtype=np.int64)
    for j, a in enumerate(arrays):
        a = a.reshape(-1)
        mat[:, j] = np.rint(a) if a.dtype.kind == "f" else a
    if (mat < 0).any():
        raise ValueError(f"negative shape value for {kind.name}")
    return mat, out_shape


def _unique_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows of an integer matrix and the inverse map (hash-based, O(N))."""
    n, d = keys.shape
    if n == 0 or d == 0:
        return keys[:1], np.zeros(n, dtype=np.intp)
    lo = keys.min(axis=0)
    span = keys.max(axis=0) - lo + 1
    if float(np.prod(span.astype(np.float64))) < 2.0 ** 62:
        code = np.zeros(n, dtype=np.int64)
        for j in range(d):
            if span[j] > 1:  # constant columns (scalars broadcast by the caller) cost nothing
                code = code * span[j] + (keys[:, j] - lo[j])
        inverse, first = _factorize(code)
        return keys[first], inverse
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1)


#: Above this many codes, pandas' hash factorization (linear time) beats numpy's sort.
_HASH_ABOVE = 4096


def _factorize(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse map of ``code`` onto its distinct values, and each value's first position."""
    if len(code) <= _HASH_ABOVE:  # small queries stay clear of pandas' import
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        return inverse.reshape(-1), first
    import pandas as pd

    inverse, uniques = pd.factorize(code)
    first = np.empty(len(uniques), dtype=np.intp)
    first[inverse[::-1]] = np.arange(len(code) - 1, -1, -1)  # last write wins: first occurrence
    return inverse, first
