"""Sweeps: predict latency, FLOPs, bytes and theoretical speedup for many design points at once.

A sweep is a Cartesian product of models × methods × phases × sparsities × batch × seq × context.
Points sharing (model, method, phase) are evaluated in one vectorized call: the family builds
its op groups once over all N points, and the estimator predicts each op group's unique shapes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pis.profiles.schema import DTYPE_BYTES, op_bytes, op_flops
from pis.profiles.store import Profile
from pis.simulator.estimator import SOURCE_NAMES, Estimator
from pis.simulator.context import FRESH_OUTPUT_OPS, FreshAlloc, InContext, fresh_alloc_bytes
from pis.simulator.host import HOST_OP, STEP_HOST_OPS
from pis.simulator.models import ModelSpec
from pis.simulator.opgraph import GEMM_CATEGORY, LM_HEAD
from pis.simulator.points import OpGroup, Points
from pis.simulator.pruning import PruneOptions, build_ops

#: Columns every sweep result has (the JSON keys promised to scripts), in output order.
RESULT_COLUMNS: tuple[str, ...] = (
    "model", "method", "sparsity", "phase", "batch", "seq_len", "context_len",
    "latency_ms", "dense_latency_ms", "speedup", "theoretical_speedup", "flops_ratio",
    "flops", "bytes", "sol_ms", "extrapolated",
    "frac_exact", "frac_interp", "frac_roofline", "context_factor",
)


@dataclass
class Totals:
    """Per-point sums over the op groups of one vectorized simulation."""

    latency_us: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    sol_us: np.ndarray
    extrapolated: np.ndarray
    #: time spent in ops answered by each estimator path (exact, interp, roofline), in µs
    by_source_us: np.ndarray
    #: latency per breakdown category, in µs
    by_category_us: dict[str, np.ndarray] = field(default_factory=dict)
    #: framework ops the host issues for one forward pass (:mod:`pis.simulator.host`)
    host_ops: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: of those, the ops of host-only glue groups (no kernel, in no op's timing)
    glue_ops: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: µs of the LM head, which no whole-decoder row timed (:mod:`pis.simulator.context`)
    head_us: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: bytes the step allocates afresh above the allocator's mmap threshold (first-touch pages,
    #: :func:`pis.simulator.context.fresh_alloc_bytes`)
    fresh_bytes: np.ndarray = field(default_factory=lambda: np.zeros(()))

    @property
    def gemm_us(self) -> np.ndarray:
        """µs of the GEMMs (category ``gemm``: projections, FFN, low-rank factors, 2:4 and the
        LM head; routers' GEMMs count as routing), which the CPU in-context model scales apart
        from the other ops (:mod:`pis.simulator.context`)."""
        return np.broadcast_to(self.by_category_us.get(GEMM_CATEGORY, 0.0), self.latency_us.shape)


def _broadcast_shape(group: OpGroup, n: int) -> dict[str, np.ndarray]:
    return {k: np.broadcast_to(v, (n,)) for k, v in group.shape.items()}


def evaluate(est: Estimator, groups: Sequence[OpGroup], n: int) -> Totals:
    """Sum predicted time, FLOPs, bytes and speed-of-light time of ``groups`` over ``n`` points."""
    zeros = lambda: np.zeros(n)  # noqa: E731 - tiny local factory
    tot = Totals(zeros(), zeros(), zeros(), zeros(), np.zeros(n, dtype=bool), np.zeros((len(SOURCE_NAMES), n)),
                 host_ops=np.full(n, STEP_HOST_OPS), glue_ops=np.zeros(n), head_us=zeros(), fresh_bytes=zeros())
    dtype = est.dtype
    for g in groups:
        count = np.broadcast_to(g.count, (n,))
        if not count.any():
            continue
        tot.host_ops += count * g.host_ops
        if g.op == HOST_OP:  # framework glue: no kernel, no device time
            tot.glue_ops += count * g.host_ops
            continue
        shape = _broadcast_shape(g, n)
        pred = est.predict(g.op, shape)
        t = count * pred.time_us
        tot.latency_us += t
        if g.name == LM_HEAD:
            tot.head_us += t
        if g.op in FRESH_OUTPUT_OPS:  # skip the array work for the many ops that never are
            tot.fresh_bytes += count * fresh_alloc_bytes(g.op, shape, DTYPE_BYTES[dtype])
        work = count * np.broadcast_to(g.work_scale, (n,))
        tot.flops += work * op_flops(g.op, shape)
        tot.bytes += work * op_bytes(g.op, shape, dtype)
        tot.sol_us += work * est.speed_of_light_us(g.op, shape)
        tot.extrapolated |= pred.extrapolated & (count > 0)
        np.add.at(tot.by_source_us, (pred.source.astype(np.intp), np.arange(n)), t)
        cat = g.category or "other"
        tot.by_category_us[cat] = tot.by_category_us.get(cat, 0.0) + t
    return tot


def simulate_points(est: Estimator, spec: ModelSpec, method: str, pts: Points,
                    opts: PruneOptions | None = None) -> Totals:
    """Simulate one method on N design points (vectorized)."""
    opts = opts or PruneOptions()
    return evaluate(est, build_ops(method, spec, pts, opts), len(pts))


def simulate_point(estimator_or_profile: "Estimator | Profile", spec: ModelSpec, method: str,
                   sparsity: float, phase: str, batch: int, seq_len: int, context: int,
                   opts: PruneOptions | None = None, in_context: bool = True) -> dict:
    """Simulate one design point and return the result row as a dict (``latency_ms`` etc.)."""
    est = (estimator_or_profile if isinstance(estimator_or_profile, Estimator)
           else Estimator(estimator_or_profile))
    df = sweep(est, [spec], [method], [sparsity], [phase], [batch], [seq_len], [context], opts,
               in_context=in_context)
    return df.iloc[0].to_dict()


def _select(tot: Totals, mask: np.ndarray) -> Totals:
    return Totals(tot.latency_us[mask], tot.flops[mask], tot.bytes[mask], tot.sol_us[mask],
                  tot.extrapolated[mask], tot.by_source_us[:, mask],
                  {k: np.broadcast_to(v, mask.shape)[mask] for k, v in tot.by_category_us.items()},
                  tot.host_ops[mask], tot.glue_ops[mask], tot.head_us[mask], tot.fresh_bytes[mask])


def _in_context(apply: "InContext | None", tot: Totals) -> np.ndarray:
    """Latency in µs of ``tot``: the op sum, or what the profile's whole-decoder rows say a
    real decoder adds to it (``apply``, :meth:`pis.simulator.context.ContextModel.at`)."""
    if apply is None:
        return tot.latency_us
    return apply(tot.latency_us, tot.host_ops, tot.glue_ops, tot.head_us, tot.gemm_us, tot.fresh_bytes)


def _frame(spec: ModelSpec, method: str, pts: Points, tot: Totals, dense: Totals,
           breakdown: bool, lat_us: np.ndarray, dense_lat_us: np.ndarray,
           fresh: "FreshAlloc | None" = None) -> pd.DataFrame:
    lat = lat_us / 1e3
    dense_lat = dense_lat_us / 1e3
    src = tot.by_source_us / np.maximum(tot.latency_us, 1e-30)
    data = {
        "model": spec.name, "method": method, "sparsity": pts.sparsity, "phase": pts.phase,
        "batch": pts.batch, "seq_len": pts.seq_len, "context_len": pts.context,
        "latency_ms": lat, "dense_latency_ms": dense_lat,
        "speedup": dense_lat / lat,
        "theoretical_speedup": dense.sol_us / tot.sol_us,
        "flops_ratio": dense.flops / np.maximum(tot.flops, 1e-30),
        "flops": tot.flops, "bytes": tot.bytes, "sol_ms": tot.sol_us / 1e3,
        "extrapolated": tot.extrapolated | dense.extrapolated,
        "frac_exact": src[0], "frac_interp": src[1], "frac_roofline": src[2],
        "context_factor": lat_us / np.maximum(tot.latency_us, 1e-30),
    }
    df = pd.DataFrame(data)
    if breakdown:
        for cat in sorted(tot.by_category_us):
            df[f"t_{cat}_ms"] = np.broadcast_to(tot.by_category_us[cat], (len(pts),)) / 1e3
        # Outside the op sums: what fresh tensors over the mmap threshold add (CPU profiles).
        df["first_touch_ms"] = fresh.cost_us(tot.fresh_bytes) / 1e3 if fresh else 0.0
    return df


def sweep(est: Estimator, models: Iterable[ModelSpec], methods: Iterable[str],
          sparsities: Iterable[float], phases: Iterable[str], batches: Iterable[int],
          seq_lens: Iterable[int], contexts: Iterable[int], opts: PruneOptions | None = None,
          breakdown: bool = False, in_context: bool = True) -> pd.DataFrame:
    """Cartesian sweep; one row per design point, in a deterministic order.

    Decode ignores ``seq_len`` and prefill ignores ``context``, but both stay in the product
    so that every combination the user asked for has a row. With ``in_context`` (default),
    latencies are op sums with what the profile's whole-decoder rows add to them
    (:mod:`pis.simulator.context`: the host-issue model on CUDA, the in-context factor on a
    CPU); without it, plain op sums.
    """
    opts = opts or PruneOptions()
    methods, sparsities = list(methods), [float(s) for s in sparsities]
    batches, seq_lens, contexts = list(batches), list(seq_lens), list(contexts)
    frames = []
    for spec, phase in itertools.product(list(models), list(phases)):
        grid = np.array(list(itertools.product(sparsities, batches, seq_lens, contexts)), dtype=np.float64)
        pts = Points.make(phase, grid[:, 1], grid[:, 2], grid[:, 3], grid[:, 0])
        dense = simulate_points(est, spec, "dense", pts, opts)
        apply = est.context.at(spec, pts, opts.kv_cache) if in_context else None
        dense_lat = _in_context(apply, dense)
        fresh = est.context.fresh_alloc() if in_context else None
        for method in methods:
            if method == "dense":
                # Dense ignores sparsity: one row per (batch, seq, context), reported at s = 0.
                first = pts.sparsity == pts.sparsity[0]
                d_pts = Points.make(phase, pts.batch[first], pts.seq_len[first], pts.context[first], 0.0)
                d_tot = _select(dense, first)
                frames.append(_frame(spec, method, d_pts, d_tot, d_tot, breakdown, dense_lat[first],
                                     dense_lat[first], fresh))
                continue
            tot = simulate_points(est, spec, method, pts, opts)
            # A routed family whose own decoder the profile timed gets its own factor.
            own = in_context and est.context.has_own_rows(method)
            lat = _in_context(est.context.at(spec, pts, opts.kv_cache, method) if own else apply, tot)
            frames.append(_frame(spec, method, pts, tot, dense, breakdown, lat, dense_lat, fresh))
    df = pd.concat(frames, ignore_index=True)
    return df.fillna({c: 0.0 for c in df.columns if c.startswith("t_")})
