"""Sweeps: latency, FLOPs, bytes and theoretical speedup of many design points at once.

A sweep is a Cartesian product of models × methods × phases × sparsities × batch × seq × context.
Points sharing (model, method, phase) are evaluated in one vectorized call: the family builds
its op groups once over all N points, and the estimator predicts each op group's unique shapes.
Results are columns of numpy arrays (:func:`sweep_columns`), or a DataFrame (:func:`sweep`).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import TYPE_CHECKING, Iterable

import numpy as np

from pis.models import ModelSpec
from pis.pruned import PruneOptions
from pis.simulator.inmodel.first_touch import FirstTouch
from pis.simulator.opsum import OpSums, evaluate
from pis.simulator.points import Points
from pis.simulator.pruning import build_ops

if TYPE_CHECKING:
    import pandas as pd

    from pis.simulator.api import Simulator

#: Columns every sweep result has (the JSON keys promised to scripts), in output order.
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "method", "weights", "sparsity", "phase", "batch", "seq_len", "context_len",
    "latency_ms", "dense_latency_ms", "speedup", "theoretical_speedup", "flops_ratio",
    "flops", "bytes", "sol_ms", "extrapolated",
    "frac_exact", "frac_interp", "frac_roofline", "in_model_factor",
)

Columns = dict[str, np.ndarray]


def _columns(spec: ModelSpec, method: str, weights: str, pts: Points, sums: OpSums, dense: OpSums,
             breakdown: bool, lat_us: np.ndarray, dense_lat_us: np.ndarray, first_touch: FirstTouch | None) -> Columns:
    n = len(pts)
    lat = lat_us / 1e3
    dense_lat = dense_lat_us / 1e3
    src = sums.by_source_us / np.maximum(sums.op_sum_us, 1e-30)
    out: Columns = {
        "model": np.full(n, spec.name, dtype=object), "method": np.full(n, method, dtype=object),
        "weights": np.full(n, weights, dtype=object),
        "sparsity": pts.sparsity, "phase": np.full(n, pts.phase, dtype=object),
        "batch": pts.batch, "seq_len": pts.seq_len, "context_len": pts.context,
        "latency_ms": lat, "dense_latency_ms": dense_lat,
        "speedup": dense_lat / lat,
        "theoretical_speedup": dense.sol_us / sums.sol_us,
        "flops_ratio": dense.flops / np.maximum(sums.flops, 1e-30),
        "flops": sums.flops, "bytes": sums.bytes, "sol_ms": sums.sol_us / 1e3,
        "extrapolated": sums.extrapolated | dense.extrapolated,
        "frac_exact": src[0], "frac_interp": src[1], "frac_roofline": src[2],
        "in_model_factor": lat_us / np.maximum(sums.op_sum_us, 1e-30),
    }
    if breakdown:
        for cat in sorted(sums.by_category_us):
            out[f"t_{cat}_ms"] = np.broadcast_to(sums.by_category_us[cat], (n,)) / 1e3
        # Outside the op sums: what fresh tensors over the mmap threshold add (CPU profiles).
        out["first_touch_ms"] = (first_touch.cost_us(sums.fresh_bytes) / 1e3 if first_touch
                                 else np.zeros(n))
    return out


def concat_columns(parts: list[Columns]) -> Columns:
    """Parts stacked in order; a breakdown category some part lacks is 0 there."""
    keys: list[str] = []
    for p in parts:
        keys += [k for k in p if k not in keys]
    # Breakdown categories sorted after the promised columns, as each part lists them.
    cats = sorted(k for k in keys if k.startswith("t_"))
    order = [k for k in keys if not k.startswith("t_") and k != "first_touch_ms"] + cats
    order += ["first_touch_ms"] if "first_touch_ms" in keys else []
    out: Columns = {}
    for k in order:
        out[k] = np.concatenate([p[k] if k in p else np.zeros(len(p["model"])) for p in parts])
    return out


def sweep_columns(sim: "Simulator", models: Iterable[ModelSpec], methods: Iterable[str],
                  sparsities: Iterable[float], phases: Iterable[str], batches: Iterable[int],
                  seq_lens: Iterable[int], contexts: Iterable[int], opts: PruneOptions | None = None,
                  breakdown: bool = False, in_model: bool = True) -> Columns:
    """Cartesian sweep as columns; one entry per design point, in a deterministic order.

    Decode ignores ``seq_len`` and prefill ignores ``context``, but both stay in the product so
    that every combination asked for has a row. With ``in_model`` (default), latencies are op
    sums with the profile's in-model correction (:mod:`pis.simulator.inmodel`); without it,
    plain op sums.

    With quantized weights (``opts.weights``), every row's speedup, bound and FLOPs ratio are
    against the unpruned model with native weights, so that rows of all weight formats compare
    on one axis; the ``dense`` rows then give what quantizing alone gains.
    """
    opts = sim.resolve(opts)
    native = replace(opts, weights="native")
    weights = opts.weights if opts.weights != "native" else sim.estimator.dtype
    floor = not opts.graph  # graph execution launches no op from the host
    methods, sparsities = list(methods), [float(s) for s in sparsities]
    batches, seq_lens, contexts = list(batches), list(seq_lens), list(contexts)
    est = sim.estimator
    parts = []
    for spec, phase in itertools.product(list(models), list(phases)):
        grid = np.array(list(itertools.product(sparsities, batches, seq_lens, contexts)), dtype=np.float64)
        pts = Points.make(phase, grid[:, 1], grid[:, 2], grid[:, 3], grid[:, 0])
        dense = evaluate(est, build_ops("dense", spec, pts, native), len(pts), floor)
        correction = sim.correction if in_model else None
        terms = correction.terms(spec, pts, opts.kv_cache, execution=opts.execution) if correction is not None else None
        dense_lat = terms.latency_us(dense) if terms is not None else dense.op_sum_us
        first_touch = correction.first_touch() if correction is not None else None
        for method in methods:
            if method == "dense":
                # Dense ignores sparsity: one row per (batch, seq, context), reported at s = 0.
                first = pts.sparsity == pts.sparsity[0]
                d_pts = Points.make(phase, pts.batch[first], pts.seq_len[first], pts.context[first], 0.0)
                ref = dense.select(first)
                if opts.weights == "native":
                    d_sums, d_lat = ref, dense_lat[first]
                else:
                    d_sums = evaluate(est, build_ops("dense", spec, d_pts, opts), len(d_pts), floor)
                    d_lat = (correction.terms(spec, d_pts, opts.kv_cache, execution=opts.execution).latency_us(d_sums)
                             if correction is not None else d_sums.op_sum_us)
                parts.append(_columns(spec, method, weights, d_pts, d_sums, ref, breakdown, d_lat,
                                      dense_lat[first], first_touch))
                continue
            sums = evaluate(est, build_ops(method, spec, pts, opts), len(pts), floor)
            if correction is None:
                lat = sums.op_sum_us
            elif not opts.graph and correction.has_own_rows(method):  # a routed family's own decoder was timed
                lat = correction.terms(spec, pts, opts.kv_cache, method).latency_us(sums)
            else:
                lat = terms.latency_us(sums)
            parts.append(_columns(spec, method, weights, pts, sums, dense, breakdown, lat, dense_lat, first_touch))
    return concat_columns(parts)


def to_frame(cols: Columns) -> "pd.DataFrame":
    """The columns as a DataFrame (pandas is imported only here)."""
    import pandas as pd

    return pd.DataFrame({k: (v.astype(str) if v.dtype == object else v) for k, v in cols.items()})


def sweep(sim: "Simulator", models: Iterable[ModelSpec], methods: Iterable[str], sparsities: Iterable[float],
          phases: Iterable[str], batches: Iterable[int], seq_lens: Iterable[int], contexts: Iterable[int],
          opts: PruneOptions | None = None, breakdown: bool = False, in_model: bool = True) -> "pd.DataFrame":
    """:func:`sweep_columns` as a DataFrame."""
    return to_frame(sweep_columns(sim, models, methods, sparsities, phases, batches, seq_lens, contexts, opts,
                                  breakdown, in_model))
