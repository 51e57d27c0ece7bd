"""In-context correction: how much slower a real decoder runs than the sum of its isolated ops.

Calibration times every op alone, in a loop. Inside a model the same ops run slower: their
outputs land in memory that is not in cache (or, on a CPU, not even mapped yet: glibc hands
freed activations back to the kernel and the next forward page-faults them in again), the
framework adds its own glue (Hugging Face's unfused RMSNorm, the attention output's
``transpose().contiguous()``, ``DynamicCache`` concatenation), and eager GPU execution may be
bound by the host issuing kernels. None of that is in a per-op profile.

A profile may therefore also hold whole-decoder rows: a dense decoder (no LM head) timed end
to end at a few (batch, length) points, by two executors: ``dense_decoder`` is Hugging Face
transformers with its ``DynamicCache`` (the ``--kv-cache concat`` world), and
``dense_decoder_prealloc`` is pis's lean reference decoder writing a preallocated cache in
place (``--kv-cache preallocated``). For each row this module predicts the same decoder, with
the same cache discipline, from the per-op rows of the same profile; the ratio

    factor = measured dense decoder / predicted op sum

is the in-context factor at that point. A simulation multiplies its op sum (less its LM head,
which no such row has: the head adds at its own row's time) by the factor at its own point —
a least-squares log-linear law through the measured factors (in tokens for prefill, in batch
and context for decode), clamped to the calibrated range — for dense and pruned models alike,
so speedups keep coming from the op graph while absolute latencies include what the op graph
cannot see.
Profiles without such rows (all v1 profiles) get a factor of 1.

The routed families' executors (dynamic depth, sparse attention, dynamic width) loop over
routers, groups and blocks, and their small gathered ops run slower in the model than both
their isolated timings and the dense decoder's factor say (on the 2-core CPU: dynamic width's
norms 2-3x the dense model's, its grouped GEMMs 9-20 % over their profile times). So CPU
profiles (schema v3) also time each routed family's own decoder at two sparsities
(``*_decoder`` rows with ``sparsity_pct``), and a simulation of that family at s > 0 takes its
factor from those rows, by the same law plus a term in s; dense, static families and s = 0
keep the dense decoder's factor.

Hugging Face's executor also costs time that scales with the ops it issues, not with their
work: on the 2-core CPU about 1 ms per forward pass (embedding, masks, rotary tables, the cache
object) plus about 5 µs per framework op (module calls and the Python around each op), some
2 ms of a 4-layer decode step at any width. A factor scales that with the op sum, so models
with fewer layers or smaller GEMMs (static depth, static width, low-rank at batch 1) were
under-predicted by 10-20 %. CPU profiles of schema v4 therefore time the same decoder at a
negligible width and four depths (``decoder_framework`` rows); :func:`fit_framework` splits
their time into a cost per step and per op, which CPU ``--kv-cache concat`` predictions add
outside the factor (and the dense rows' factors exclude).

That law is for CPUs. On a GPU what the op sum misses is mostly the host issuing framework
ops, which scales with the number of ops, not with kernel time, so CUDA profiles use the same
rows to fit the host-issue model instead (:func:`fit_hosts`, :mod:`pis.simulator.host`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from pis.profiles.schema import DECODER_OPS, FRAMEWORK_OP, ROUTED_DECODER_OPS, STATUS_OK
from pis.simulator.host import combine
from pis.simulator.models import ModelSpec
from pis.simulator.opgraph import LM_HEAD
from pis.simulator.points import Points

if TYPE_CHECKING:  # the estimator builds this model: import it for types only
    import pandas as pd

    from pis.simulator.estimator import Estimator

#: ``(op_sum_us, host_ops, glue_ops, head_us) -> latency_us`` at fixed design points (:meth:`ContextModel.at`).
InContext = Callable[..., np.ndarray]

#: Dimensions that identify the decoder a whole-decoder row measured.
DIMS: tuple[str, ...] = ("hidden", "ffn", "heads", "kv_heads", "head_dim")
#: The whole-decoder op measured for each KV-cache discipline of :class:`PruneOptions`.
OP_FOR_KV_CACHE: dict[str, str] = dict(zip(("concat", "preallocated"), DECODER_OPS))
#: The executor each whole-decoder op measured: a dense cache discipline, or a routed family.
EXECUTOR_OF_OP: dict[str, str] = {**{op: kv for kv, op in OP_FOR_KV_CACHE.items()},
                                  **{op: family for family, op in ROUTED_DECODER_OPS.items()}}


@dataclass(frozen=True)
class ContextPoint:
    """One measured dense decoder and the op sum predicted for it."""

    phase: str
    batch: int
    length: int  # seq_len in prefill, context in decode
    measured_us: float
    predicted_us: float
    #: framework ops the decoder issues per step (:mod:`pis.simulator.host`)
    host_ops: float = 0.0
    #: routed decoders: the sparsity they ran at (0 for dense rows)
    sparsity: float = 0.0
    #: µs of host-only loop glue the prediction adds outside the factor (routed rows, CPU)
    glue_us: float = 0.0
    #: µs of Hugging Face framework cost added outside the factor (concat rows, CPU, v4)
    framework_us: float = 0.0

    @property
    def factor(self) -> float:
        """(measured − loop glue − framework) / predicted op sum: what the factor must multiply."""
        return (self.measured_us - self.glue_us - self.framework_us) / self.predicted_us


@dataclass(frozen=True)
class Framework:
    """What Hugging Face's decoder costs per step apart from its ops' work (CPU, one phase):
    a constant per forward pass (embedding, masks, rotary tables, cache object) plus a cost per
    framework op the decoder issues (module calls and Python around each op). Fitted to the
    ``decoder_framework`` rows: the decoder at a negligible width, at several depths."""

    step_us: float
    us_per_op: float
    rows: int

    def cost_us(self, host_ops: "np.ndarray | float") -> np.ndarray:
        """Framework µs of a step that issues ``host_ops`` framework ops."""
        return self.step_us + self.us_per_op * np.asarray(host_ops, dtype=np.float64)


class ContextModel:
    """The in-context factors of one profile, per decoder shape and phase."""

    def __init__(self, est: Estimator) -> None:
        rows = est.profile.rows
        rows = rows[rows["op"].isin([*EXECUTOR_OF_OP, FRAMEWORK_OP]) & (rows["status"] == STATUS_OK)
                    & (rows["dtype"] == est.dtype)]
        #: CUDA: eager steps are bound by the host issuing ops (:mod:`pis.simulator.host`);
        #: on a CPU the op timings already include their dispatch.
        self.host_bound = est.is_cuda
        self._overhead_us = est.overhead_us
        #: measured host µs per glue op (None: the profile has no host_glue row)
        self._glue_us = est.host_glue_us
        #: CPU: µs per host-only glue op (measured host_glue, else the overhead row's dispatch)
        self._floor_us = self._glue_us if self._glue_us is not None else (self._overhead_us or 0.0)
        decoders = _decoder_groups(rows)
        #: CPU, per phase: Hugging Face's framework cost, priced outside the concat factor
        self.framework: dict[str, Framework] = ({} if self.host_bound else fit_framework(
            est, {k: v for k, v in decoders.items() if k[0] == FRAMEWORK_OP}))
        #: (executor, dims) -> measured points; executor: "concat", "preallocated" or a family
        self.points: dict[tuple, list[ContextPoint]] = {}
        for (op, dims, layers, phase, s), (batch, length, median_us) in decoders.items():
            if op == FRAMEWORK_OP:
                continue
            executor, spec = EXECUTOR_OF_OP[op], _decoder_spec(dims, layers)
            if executor in OP_FOR_KV_CACHE:
                pred, host_ops, glue = decoder_op_sums(est, spec, phase, batch, length, executor)
            else:
                pred, host_ops, glue = decoder_op_sums(est, spec, phase, batch, length, "preallocated",
                                                       method=executor, sparsity=s)
            fw = self.framework.get(phase) if executor == "concat" else None
            framework_us = fw.cost_us(host_ops) if fw else np.zeros(len(batch))
            self.points.setdefault((executor, dims), []).extend(
                ContextPoint(phase, int(batch[i]), int(length[i]), float(median_us[i]), float(pred[i]),
                             float(host_ops[i]), s, float(glue[i]) * self._floor_us, float(framework_us[i]))
                for i in range(len(batch)))
        self._interp: dict[tuple, object] = {}
        self._host: dict[tuple, HostFit] | None = None  # fitted on first use

    def __bool__(self) -> bool:
        return bool(self.points)

    def nearest_dims(self, spec: ModelSpec, executor: str = "concat") -> tuple[int, ...] | None:
        """The measured decoder shape closest to ``spec`` (log distance of hidden and FFN) among
        ``executor``'s rows (a dense cache discipline or a routed family)."""
        measured = [dims for ex, dims in self.points if ex == executor]
        if not measured:
            return None
        want = np.log([spec.hidden, spec.ffn])
        return min(measured, key=lambda d: float(np.abs(np.log(d[:2]) - want).sum()))

    def latency_us(self, spec: ModelSpec, pts: Points, op_sum_us: np.ndarray, host_ops: np.ndarray,
                   kv_cache: str = "concat", glue_ops: "np.ndarray | float" = 0.0,
                   head_us: "np.ndarray | float" = 0.0) -> np.ndarray:
        """In-context latency (µs) of design points whose op sum is ``op_sum_us``, of which
        ``head_us`` is the LM head (see :meth:`at`)."""
        return self.at(spec, pts, kv_cache)(op_sum_us, host_ops, glue_ops, head_us)

    def has_own_rows(self, method: str) -> bool:
        """Whether ``method``'s own executor has whole-decoder rows (used on a CPU, see :meth:`at`)."""
        return not self.host_bound and any(ex == method for ex, _ in self.points)

    def at(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat", method: str | None = None) -> "InContext":
        """What the in-context model adds at ``pts``, resolved once for every method a sweep
        evaluates there (or for ``method`` where it has its own rows, :meth:`has_own_rows`):
        a function ``(op_sum_us, host_ops, glue_ops, head_us) -> latency_us``.

        The LM head (``head_us`` of the op sum) is priced at its own row on both devices,
        never scaled: no whole-decoder row includes it, so nothing fitted to them describes it.
        On the 2-core CPU the head in Hugging Face decode costs what it costs alone (model with
        vocabulary 8192 minus 64, batch 1/4/8: 1.28/2.52/3.27 ms against 1.18/2.41/3.51 ms
        alone, ``benchmarks/head_in_context.py``), where the decode factor is 1.3-1.5.

        CUDA: the host-issue model, ``combine(u · host_ops, f · (op_sum − head) + head, p)`` fitted to the
        profile's whole-decoder rows (:meth:`host_fit`); glue ops cost the measured
        ``host_glue`` where the profile has it. CPU: the op sum times the in-context factor
        (:meth:`factor`), plus the host-only ``glue_ops`` (a routing loop's views and index
        tensors, in no op's timing) at the measured ``host_glue`` µs per op, else the
        ``overhead`` row's; the host and the device are one there, so the glue adds to the step.
        (The factor multiplies the op sum less the head, and the head adds as it is.)
        With ``kv_cache="concat"`` (Hugging Face's executor) and a profile that measured it,
        Hugging Face's framework cost (:class:`Framework`) adds to the step too, outside the
        factor: it scales with the ops issued, not with their work, so a model with fewer layers
        or smaller GEMMs keeps all of it per op (not at s > 0 of a family with its own rows,
        whose reference executor has no such cost).
        """
        glue_us = self._glue_us
        if self.host_bound:
            fit = self.host_fit(spec, pts.phase, kv_cache)
            if fit is None:
                return lambda op_sum, host_ops, glue_ops=0.0, head_us=0.0: np.asarray(op_sum, dtype=np.float64)
            return lambda op_sum, host_ops, glue_ops=0.0, head_us=0.0: fit.latency_us(
                np.asarray(host_ops), np.asarray(op_sum), np.asarray(glue_ops, dtype=np.float64), glue_us,
                np.asarray(head_us, dtype=np.float64))
        factor, floor_us = self.factor(spec, pts, kv_cache, method), self._floor_us
        fw = self.framework.get(pts.phase) if kv_cache == "concat" else None
        # Hugging Face runs the step unless the family's own (reference) executor does.
        hf = (pts.sparsity == 0) if method and self.has_own_rows(method) else np.ones(len(pts), dtype=bool)

        def latency_us(op_sum: np.ndarray, host_ops: np.ndarray, glue_ops: "np.ndarray | float" = 0.0,
                       head_us: "np.ndarray | float" = 0.0) -> np.ndarray:
            head = np.asarray(head_us, dtype=np.float64)
            out = factor * (op_sum - head) + head + floor_us * np.asarray(glue_ops, dtype=np.float64)
            return out if fw is None else out + np.where(hf, fw.cost_us(host_ops), 0.0)
        return latency_us

    def host_fits(self) -> dict[tuple, "HostFit"]:
        """The fitted host-issue models, keyed (kv_cache, dims, phase); fitted on first use."""
        if self._host is None:
            self._host = fit_hosts({k: v for k, v in self.points.items() if k[0] in OP_FOR_KV_CACHE})
        return self._host

    def host_fit(self, spec: ModelSpec, phase: str, kv_cache: str = "concat") -> "HostFit | None":
        """The host-issue model for ``spec``'s nearest measured decoder and ``phase``.

        Without whole-decoder rows: the profile's ``overhead`` row as the host cost per op, no
        device factor and a plain max, a floor (None when the profile has neither).
        """
        dims = self.nearest_dims(spec, kv_cache)
        fit = self.host_fits().get((kv_cache, dims, phase)) if dims else None
        if fit is None and self._overhead_us is not None:
            fit = HostFit(self._overhead_us, 1.0, float("inf"), 0)
        return fit

    def factor(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat", method: str | None = None) -> np.ndarray:
        """The factor at every design point of ``pts`` (ones without calibrated rows): the
        dense decoder's of ``kv_cache``, or at s > 0 ``method``'s own where it has rows."""
        dense = self._law(spec, pts, kv_cache, routed=False)
        if dense is None:
            dense = np.ones(len(pts))
        own = self._law(spec, pts, method, routed=True) if method and self.has_own_rows(method) else None
        return dense if own is None else np.where(pts.sparsity > 0, own, dense)

    def _law(self, spec: ModelSpec, pts: Points, executor: str, routed: bool) -> np.ndarray | None:
        dims = self.nearest_dims(spec, executor)
        key = (executor, dims)
        cps = [p for p in self.points.get(key, []) if p.phase == pts.phase] if dims else []
        if not cps:
            return None
        query = [pts.batch * pts.seq_len] if pts.phase == "prefill" else [pts.batch, pts.context]
        if routed:
            query.append(pts.sparsity)
        return self._fit(key + (pts.phase,), cps, query, routed)

    def _fit(self, key: tuple, cps: list[ContextPoint], query: list[np.ndarray], routed: bool = False) -> np.ndarray:
        """A least-squares log-linear law through the measured factors, evaluated at ``query``.

        Prefill: log f = a + b·log(tokens); decode: log f = a + b·log(batch) + c·log(context);
        a routed family's rows add + d·s (a query whose last axis is the sparsity).
        Single measurements of a whole decoder scatter by several percent on a busy machine, so
        a fit smooths them where interpolating through every point would carry each one's noise
        (scored on the CPU full suite: bilinear interpolation on the 5x3 decode grid and a
        robust Cauchy loss both did worse than least squares).
        Axes with one measured value drop out; queries are clamped to the measured box.
        """
        prefill = key[-1] == "prefill"

        def features(axes: list[np.ndarray]) -> np.ndarray:
            x = np.column_stack([np.asarray(a, dtype=np.float64) for a in axes])
            logged = x.shape[1] - 1 if routed else x.shape[1]  # sparsity stays linear
            return np.column_stack([np.log(x[:, :logged]), x[:, logged:]])

        if key not in self._interp:
            axes = [[p.batch * p.length] if prefill else [p.batch, p.length] for p in cps]
            if routed:
                axes = [a + [p.sparsity] for a, p in zip(axes, cps)]
            x = features(list(np.asarray(axes, dtype=np.float64).T))
            lo, hi = x.min(axis=0), x.max(axis=0)
            used = hi > lo
            design = np.column_stack([np.ones(len(x)), x[:, used]])
            coef, *_ = np.linalg.lstsq(design, np.log([p.factor for p in cps]), rcond=None)
            self._interp[key] = (coef, used, lo, hi)
        coef, used, lo, hi = self._interp[key]
        q = np.clip(features(query), lo, hi)
        return np.exp(coef[0] + q[:, used] @ coef[1:])

    def summary(self) -> list[dict]:
        """Every measured point with its factor (for ``pis-profile info`` and the docs)."""
        out = []
        for (ex, dims), cps in sorted(self.points.items()):
            for p in sorted(cps, key=lambda p: (p.phase, p.sparsity, p.batch, p.length)):
                out.append(dict(executor=ex, **dict(zip(DIMS, dims)), phase=p.phase, sparsity=p.sparsity,
                                batch=p.batch, length=p.length, measured_ms=p.measured_us / 1e3,
                                op_sum_ms=p.predicted_us / 1e3, framework_ms=p.framework_us / 1e3,
                                factor=p.factor))
        return out


@dataclass(frozen=True)
class HostFit:
    """The host-issue model of one decoder shape and phase (:mod:`pis.simulator.host`)."""

    #: host time per framework op, µs
    us_per_op: float
    #: device time in context / op sum (cache copies, allocator, kernels between the ops)
    device_factor: float
    #: sharpness of ``combine`` (inf: plain max)
    p: float
    #: whole-decoder rows it was fitted to (0: the profile's overhead row, a floor)
    rows: int

    def latency_us(self, host_ops: np.ndarray, op_sum_us: np.ndarray, glue_ops: "np.ndarray | float" = 0.0,
                   glue_us: float | None = None, head_us: "np.ndarray | float" = 0.0) -> np.ndarray:
        """Step time of ``host_ops`` framework ops over ``op_sum_us`` of kernels (``head_us``
        of them the LM head's); the ``glue_ops`` among them cost ``glue_us`` each where the
        profile measured it (the whole-decoder rows the fit saw have no glue), else the fitted
        cost per op."""
        per_glue = self.us_per_op if glue_us is None else glue_us
        host = self.us_per_op * (host_ops - glue_ops) + per_glue * glue_ops
        # The fit never saw an LM head (whole-decoder rows have none): its kernel is unscaled.
        return combine(host, self.device_factor * (op_sum_us - head_us) + head_us, self.p)


#: Bounds of the fit: host µs per framework op, and the device factor.
HOST_US_BOUNDS: tuple[float, float] = (0.5, 200.0)
DEVICE_FACTOR_BOUNDS: tuple[float, float] = (0.5, 3.0)
#: Candidate sharpness of the host/device combination; one per profile, the best fit.
P_CANDIDATES: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)


def _fit_one(cps: list[ContextPoint], p: float) -> tuple[HostFit, float]:
    """(u, f) by least squares in log time at fixed ``p``; the fit and its squared residual."""
    from scipy.optimize import least_squares

    n = np.array([c.host_ops for c in cps])
    d = np.array([c.predicted_us for c in cps])
    m = np.array([c.measured_us for c in cps])
    lo = np.log([HOST_US_BOUNDS[0], DEVICE_FACTOR_BOUNDS[0]])
    hi = np.log([HOST_US_BOUNDS[1], DEVICE_FACTOR_BOUNDS[1]])
    x0 = np.clip(np.log([float(np.min(m / n)), 1.0]), lo, hi)

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log(combine(np.exp(x[0]) * n, np.exp(x[1]) * d, p) / m)

    res = least_squares(residual, x0, bounds=(lo, hi))
    u, f = np.exp(res.x)
    return HostFit(float(u), float(f), p, len(cps)), float(np.sum(res.fun ** 2))


def fit_hosts(points: dict[tuple, list[ContextPoint]]) -> dict[tuple, HostFit]:
    """The host-issue model of every measured decoder shape and phase.

    Per shape and phase, the host cost per op ``u`` and the device factor ``f`` are fitted by
    least squares in log time to the whole-decoder rows, which range from host-bound (small
    batch) to device-bound (large batch and context). How sharply host and device time combine
    is a property of the machine: one ``p`` of :data:`P_CANDIDATES` for the whole profile,
    the one with the least total residual. Deterministic (fixed start, scipy's trust-region
    reflective solver).
    """
    groups = {(kv, dims, phase): [c for c in cps if c.phase == phase]
              for (kv, dims), cps in points.items() for phase in ("prefill", "decode")}
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    best: tuple[float, dict[tuple, HostFit]] | None = None
    for p in P_CANDIDATES:
        fits = {k: _fit_one(cps, p) for k, cps in groups.items()}
        sse = sum(r for _, r in fits.values())
        if best is None or sse < best[0]:
            best = (sse, {k: f for k, (f, _) in fits.items()})
    return best[1] if best else {}


#: Relative residual at which the framework fit stops trusting a row fully (soft-L1 loss).
FRAMEWORK_FIT_SCALE = 0.05


def _decoder_groups(rows: "pd.DataFrame") -> dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Whole-decoder rows per decoder, ``(op, dims, layers, phase, sparsity) -> (batch, length,
    median_us)`` arrays, so that each decoder's op sums are one vectorized evaluation, not one
    per row: the in-context model is built at the start of every simulation on the profile."""
    routed = set(ROUTED_DECODER_OPS.values())
    groups: dict[tuple, list] = {}
    for r in rows.itertuples(index=False):
        phase = "prefill" if int(r.causal) else "decode"
        length = int(r.q_len) if phase == "prefill" else int(r.kv_len)
        s = float(r.sparsity_pct) / 100.0 if r.op in routed else 0.0
        key = (r.op, tuple(int(getattr(r, d)) for d in DIMS), int(r.layers), phase, s)
        groups.setdefault(key, []).append((int(r.batch), length, float(r.median_us)))
    return {k: tuple(np.array(c) for c in zip(*v)) for k, v in groups.items()}


def _decoder_spec(dims: tuple[int, ...], layers: int) -> ModelSpec:
    """The decoder (no vocabulary: no LM head) of a whole-decoder row's dimensions."""
    return ModelSpec("decoder", **dict(zip(DIMS, dims)), layers=layers, vocab=1)


def fit_framework(est: Estimator, decoders: dict[tuple, tuple]) -> dict[str, Framework]:
    """Per phase, :class:`Framework` fitted to ``decoder_framework`` rows (grouped as
    :func:`_decoder_groups` groups them): measured − predicted op
    sum = step_us + us_per_op · framework ops, both non-negative, over the rows' depths. A phase
    needs rows at two op counts at least.

    Robust, not plain least squares: these steps take a few ms, and one disturbed measurement
    on a shared machine (a 4-layer step once timed at 45 ms against 3-4 ms for its neighbours)
    would otherwise set the fit. Residuals are relative to the measured time, with scipy's
    soft-L1 loss beyond :data:`FRAMEWORK_FIT_SCALE`, started from the ``nnls`` solution.
    """
    from scipy.optimize import least_squares, nnls

    by_phase: dict[str, list] = {}
    for (_, dims, layers, phase, _), (batch, length, median_us) in decoders.items():
        pred, host_ops, _ = decoder_op_sums(est, _decoder_spec(dims, layers), phase, batch, length, "concat")
        by_phase.setdefault(phase, []).append((host_ops, pred, median_us))
    out = {}
    for phase, parts in by_phase.items():
        ops, op_sum, measured = (np.concatenate(c).astype(np.float64) for c in zip(*parts))
        if np.unique(ops).size < 2:
            continue
        design = np.column_stack([np.ones(len(ops)), ops])
        start, _ = nnls(design, measured - op_sum)
        fit = least_squares(lambda x: (design @ x + op_sum - measured) / measured, start,
                            bounds=(0.0, np.inf), loss="soft_l1", f_scale=FRAMEWORK_FIT_SCALE)
        out[phase] = Framework(float(fit.x[0]), float(fit.x[1]), len(ops))
    return out


def decoder_op_sums(est: Estimator, spec: ModelSpec, phase: str, batch: np.ndarray, length: np.ndarray,
                    kv_cache: str = "concat", method: str = "dense",
                    sparsity: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted µs of the decoder ``spec`` (``method`` at ``sparsity``; dense by default)
    without its LM head at each (batch, length), from per-op rows; the framework ops it issues
    per step; and how many of those are host-only loop glue."""
    from pis.simulator.pruning import PruneOptions, build_ops
    from pis.simulator.sweep import evaluate

    batch, length = np.atleast_1d(batch), np.atleast_1d(length)
    seq, ctx = (length, length) if phase == "prefill" else (np.ones_like(length), length)
    pts = Points.make(phase, batch, seq, ctx, sparsity)
    # The cache discipline of the executor that measured the row.
    groups = [g for g in build_ops(method, spec, pts, PruneOptions(kv_cache=kv_cache)) if g.name != LM_HEAD]
    tot = evaluate(est, groups, len(pts))
    return tot.latency_us, tot.host_ops, tot.glue_ops


def decoder_op_sum(est: Estimator, spec: ModelSpec, phase: str, batch: int, length: int,
                   kv_cache: str = "concat", method: str = "dense",
                   sparsity: float = 0.0) -> tuple[float, float, float]:
    """:func:`decoder_op_sums` at one (batch, length)."""
    pred, host_ops, glue = decoder_op_sums(est, spec, phase, np.array([batch]), np.array([length]),
                                           kv_cache, method, sparsity)
    return float(pred[0]), float(host_ops[0]), float(glue[0])
