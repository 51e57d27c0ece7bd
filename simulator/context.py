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

One factor on the whole op sum assumes every op runs equally much slower in the model. On the
2-core CPU it is not so: under ``torch.profiler`` the validation model's GEMMs run at about
their profiled time while everything else takes more than twice its op sum (framework Python
included), so a family that shrinks the GEMMs and keeps the rest (low-rank, static width) lost
less of its in-context time than it should and was predicted 15-18 % too fast at batch 1. At
one width the GEMM and non-GEMM op sums of the dense rows rise together and no fit can tell
them apart, so CPU grids also time the Hugging Face decoder with a quarter of its FFN; where a
profile has both widths, the law becomes ``f(x) · (GEMMs + ρ · other ops)`` with one ρ per
phase (:meth:`ContextModel.factors`).

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

One thing no factor describes: a tensor above glibc's largest mmap threshold (32 MiB on 64-bit)
is a fresh mapping at each allocation (unless the heap happens to hold a free block that large),
so its first write faults in and zeroes every page; below it, a freed block is reused warm from
the heap. On the 2-core CPU ``torch.cat`` of a 30 MiB cache runs at 25 GB/s and of a 34 MiB
one at 8.8 GB/s, with the last-level cache evicted (``benchmarks/alloc_cliff.py``). Hugging Face's ``DynamicCache`` appends by ``torch.cat``, so decode past B·C·kv_heads·head_dim·4
bytes = 32 MiB per layer pays it twice per layer (the dense decoder's factor jumps from 1.3 to
2.0-2.3 between B·C = 16k and 32k tokens at four KV heads); a routed executor's gathered K/V
blocks pay it the same way. Fitting the factor law through those rows bent it everywhere else, so
the law fits the rows without fresh allocations over the threshold, and the rows with them fit one
more constant per CPU profile: µs per MiB of first-touch pages (:class:`FreshAlloc`), added to the
step outside the factor (:func:`fresh_alloc_bytes` says which ops allocate afresh).

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
    from pis.simulator.sweep import Totals

#: ``(op_sum_us, host_ops, glue_ops, head_us, gemm_us, fresh_bytes) -> latency_us`` at fixed
#: design points (:meth:`ContextModel.at`).
InContext = Callable[..., np.ndarray]

#: Dimensions that identify the decoder a whole-decoder row measured.
DIMS: tuple[str, ...] = ("hidden", "ffn", "heads", "kv_heads", "head_dim")
#: The whole-decoder op measured for each KV-cache discipline of :class:`PruneOptions`.
OP_FOR_KV_CACHE: dict[str, str] = dict(zip(("concat", "preallocated"), DECODER_OPS))
#: glibc's largest dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``): a block
#: above it is a fresh mapping, whose pages fault in on first touch (unless the heap happens to
#: hold a free block that large: calibration therefore times such copies into kept tensors).
FRESH_ALLOC_THRESHOLD = 32 * 2**20
#: Ops whose output the decoders allocate anew every step: the ``torch.cat`` cache append, and
#: the K/V gathers priced as one (:mod:`pis.simulator.pruning`).
FRESH_OUTPUT_OPS: frozenset[str] = frozenset({"kv_concat"})


def fresh_alloc_bytes(op: str, shape: "dict[str, np.ndarray]", itemsize: int) -> "np.ndarray | float":
    """Bytes one call of ``op`` allocates afresh above :data:`FRESH_ALLOC_THRESHOLD` (0 below it,
    and for ops that write into existing tensors)."""
    if op not in FRESH_OUTPUT_OPS:
        return 0.0
    out = np.asarray(shape["numel"], dtype=np.float64) * itemsize
    return np.where(out > FRESH_ALLOC_THRESHOLD, out, 0.0)


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
    #: µs of the op sum spent in GEMMs (:attr:`pis.simulator.sweep.Totals.gemm_us`)
    gemm_us: float = 0.0
    #: bytes allocated afresh above the mmap threshold per step (CPU rows; :class:`FreshAlloc`)
    fresh_bytes: float = 0.0

    @property
    def target_us(self) -> float:
        """What the factors must explain: measured − loop glue − framework."""
        return self.measured_us - self.glue_us - self.framework_us

    @property
    def factor(self) -> float:
        """(measured − loop glue − framework) / predicted op sum: what the factor must multiply."""
        return self.target_us / self.predicted_us


@dataclass(frozen=True)
class FreshAlloc:
    """First-touch cost of fresh allocations above :data:`FRESH_ALLOC_THRESHOLD` (CPU), fitted to
    the whole-decoder rows that make them (:meth:`ContextModel.fresh_alloc`)."""

    us_per_mib: float
    rows: int

    def cost_us(self, fresh_bytes: "np.ndarray | float") -> np.ndarray:
        return self.us_per_mib * np.asarray(fresh_bytes, dtype=np.float64) / 2**20


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
                tot = decoder_totals(est, spec, phase, batch, length, executor)
            else:
                tot = decoder_totals(est, spec, phase, batch, length, "preallocated", method=executor, sparsity=s)
            fw = self.framework.get(phase) if executor == "concat" else None
            framework_us = fw.cost_us(tot.host_ops) if fw else np.zeros(len(batch))
            self.points.setdefault((executor, dims), []).extend(
                ContextPoint(phase, int(batch[i]), int(length[i]), float(median_us[i]), float(tot.latency_us[i]),
                             float(tot.host_ops[i]), s, float(tot.glue_ops[i]) * self._floor_us,
                             float(framework_us[i]), float(tot.gemm_us[i]),
                             0.0 if self.host_bound else float(tot.fresh_bytes[i]))
                for i in range(len(batch)))
        #: (executor, dims) -> the same decoder timed with a narrower FFN (CPU grids, step 19):
        #: the pair separates the GEMMs' in-context factor from the other ops' (:meth:`factors`)
        self.narrow: dict[tuple, tuple[int, ...]] = {}
        for ex, dims in self.points:
            narrower = [d for e, d in self.points if e == ex and d[1] < dims[1] and _same_but_ffn(d, dims)]
            if narrower:
                self.narrow[(ex, dims)] = min(narrower, key=lambda d: d[1])
        self._narrowed = {(ex, d) for (ex, _), d in self.narrow.items()}
        self._interp: dict[tuple, object] = {}
        self._host: dict[tuple, HostFit] | None = None  # fitted on first use
        self._fresh: FreshAlloc | None | bool = False  # fitted on first use (None: no rows)

    def __bool__(self) -> bool:
        return bool(self.points)

    def nearest_dims(self, spec: ModelSpec, executor: str = "concat") -> tuple[int, ...] | None:
        """The measured decoder shape closest to ``spec`` (log distance of hidden and FFN) among
        ``executor``'s rows (a dense cache discipline or a routed family)."""
        # A narrow-FFN companion informs its wide decoder's law; it is never a law of its own.
        measured = [dims for ex, dims in self.points if ex == executor and (ex, dims) not in self._narrowed]
        if not measured:
            return None
        want = np.log([spec.hidden, spec.ffn])
        return min(measured, key=lambda d: float(np.abs(np.log(d[:2]) - want).sum()))

    def latency_us(self, spec: ModelSpec, pts: Points, op_sum_us: np.ndarray, host_ops: np.ndarray,
                   kv_cache: str = "concat", glue_ops: "np.ndarray | float" = 0.0,
                   head_us: "np.ndarray | float" = 0.0, gemm_us: "np.ndarray | float | None" = None,
                   fresh_bytes: "np.ndarray | float" = 0.0) -> np.ndarray:
        """In-context latency (µs) of design points whose op sum is ``op_sum_us``, of which
        ``head_us`` is the LM head and ``gemm_us`` the GEMMs, head included, and which allocate
        ``fresh_bytes`` afresh over the mmap threshold (see :meth:`at`)."""
        return self.at(spec, pts, kv_cache)(op_sum_us, host_ops, glue_ops, head_us, gemm_us, fresh_bytes)

    def has_own_rows(self, method: str) -> bool:
        """Whether ``method``'s own executor has whole-decoder rows (used on a CPU, see :meth:`at`)."""
        return not self.host_bound and any(ex == method for ex, _ in self.points)

    def at(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat", method: str | None = None) -> "InContext":
        """What the in-context model adds at ``pts``, resolved once for every method a sweep
        evaluates there (or for ``method`` where it has its own rows, :meth:`has_own_rows`):
        a function ``(op_sum_us, host_ops, glue_ops, head_us, gemm_us, fresh_bytes) -> latency_us``.

        The LM head (``head_us`` of the op sum) is priced at its own row on both devices,
        never scaled: no whole-decoder row includes it, so nothing fitted to them describes it.
        On the 2-core CPU the head in Hugging Face decode costs what it costs alone (model with
        vocabulary 8192 minus 64, batch 1/4/8: 1.28/2.52/3.27 ms against 1.18/2.41/3.51 ms
        alone, ``benchmarks/head_in_context.py``), where the decode factor is 1.3-1.5.

        CUDA: the host-issue model, ``combine(u · host_ops, f · (op_sum − head) + head, p)`` fitted to the
        profile's whole-decoder rows (:meth:`host_fit`); glue ops cost the measured
        ``host_glue`` where the profile has it. CPU: the op sum times the in-context factor
        (:meth:`factors`: one on the GEMMs, one on the other ops, where the profile timed the
        decoder at two FFN widths; else one factor on both), plus the host-only ``glue_ops``
        (a routing loop's views and index tensors, in no op's timing) at the measured ``host_glue`` µs per op, else the
        ``overhead`` row's; the host and the device are one there, so the glue adds to the step.
        (The factors multiply the op sum less the head, and the head adds as it is; without
        ``gemm_us`` the GEMMs are taken to be the head alone, exact where the factors are one.)
        Fresh allocations above the mmap threshold (``fresh_bytes``) add their first-touch cost
        (:meth:`fresh_alloc`), on a CPU only.
        With ``kv_cache="concat"`` (Hugging Face's executor) and a profile that measured it,
        Hugging Face's framework cost (:class:`Framework`) adds to the step too, outside the
        factor: it scales with the ops issued, not with their work, so a model with fewer layers
        or smaller GEMMs keeps all of it per op (not at s > 0 of a family with its own rows,
        whose reference executor has no such cost).
        """
        glue_us = self._glue_us
        if self.host_bound:
            fit = self.host_fit(spec, pts.phase, kv_cache)
            # The CUDA caching allocator reuses its blocks: fresh_bytes cost nothing there.
            if fit is None:
                return lambda op_sum, host_ops, glue_ops=0.0, head_us=0.0, gemm_us=None, fresh_bytes=0.0: np.asarray(
                    op_sum, dtype=np.float64)
            return lambda op_sum, host_ops, glue_ops=0.0, head_us=0.0, gemm_us=None, fresh_bytes=0.0: fit.latency_us(
                np.asarray(host_ops), np.asarray(op_sum), np.asarray(glue_ops, dtype=np.float64), glue_us,
                np.asarray(head_us, dtype=np.float64))
        (f_gemm, f_other), floor_us = self.factors(spec, pts, kv_cache, method), self._floor_us
        fw = self.framework.get(pts.phase) if kv_cache == "concat" else None
        # Hugging Face runs the step unless the family's own (reference) executor does.
        hf = (pts.sparsity == 0) if method and self.has_own_rows(method) else np.ones(len(pts), dtype=bool)
        fresh = self.fresh_alloc()

        def latency_us(op_sum: np.ndarray, host_ops: np.ndarray, glue_ops: "np.ndarray | float" = 0.0,
                       head_us: "np.ndarray | float" = 0.0, gemm_us: "np.ndarray | float | None" = None,
                       fresh_bytes: "np.ndarray | float" = 0.0) -> np.ndarray:
            head = np.asarray(head_us, dtype=np.float64)
            gemm = head if gemm_us is None else np.asarray(gemm_us, dtype=np.float64)
            out = _scaled(f_gemm, f_other, op_sum, gemm, head) + floor_us * np.asarray(glue_ops, dtype=np.float64)
            if fresh is not None:
                out = out + fresh.cost_us(fresh_bytes)
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

    def factors(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat",
                method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(GEMM factor, factor on the other ops) at every design point of ``pts`` (ones
        without calibrated rows): the dense decoder's of ``kv_cache``, or at s > 0 ``method``'s
        own where it has rows (one factor on both parts: its rows are at one width).

        Where the profile timed the dense decoder also with a narrower FFN (CPU grids since step 19)
        the other ops' factor is ρ times the GEMMs' (:meth:`_split_fit`): inside Hugging Face's
        decoder the GEMMs run near their profiled speed while the norms, rotary and cache glue
        run further from theirs (ρ 1.0-1.35 in prefill, 1.26-1.44 in decode over five calibrations
        on the 2-core CPU),
        so one factor on the whole op sum shrinks that excess for every family that shrinks the
        GEMMs (low-rank at batch 1 was 15-18 % too fast). Elsewhere both are the one factor
        (:meth:`factor`).
        """
        dense = self._law(spec, pts, kv_cache, routed=False)
        if dense is None:
            dense = (np.ones(len(pts)), np.ones(len(pts)))
        own = self._law(spec, pts, method, routed=True) if method and self.has_own_rows(method) else None
        if own is None:
            return dense
        routed = pts.sparsity > 0
        return np.where(routed, own[0], dense[0]), np.where(routed, own[1], dense[1])

    def factor(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat", method: str | None = None) -> np.ndarray:
        """The one in-context factor at ``pts`` where the law has one (:meth:`factors`);
        raises ValueError where the GEMMs and the other ops have their own."""
        f_gemm, f_other = self.factors(spec, pts, kv_cache, method)
        if not np.array_equal(f_gemm, f_other):
            raise ValueError("this profile's law has two factors (GEMMs, other ops): use factors()")
        return f_gemm

    def _law(self, spec: ModelSpec, pts: Points, executor: str, routed: bool) -> tuple[np.ndarray, np.ndarray] | None:
        dims = self.nearest_dims(spec, executor)
        key = (executor, dims)
        cps = self._phase_points(key, pts.phase) if dims else []
        if not cps:
            return None
        query = [pts.batch * pts.seq_len] if pts.phase == "prefill" else [pts.batch, pts.context]
        if routed:
            query.append(pts.sparsity)
            f = self._fit(key + (pts.phase,), cps, query, routed)
            return f, f
        if not self._narrow_points(key, pts.phase):
            f = self._fit(key + (pts.phase,), cps, query)
            return f, f
        # The weighted op sum's law: the GEMMs' factor is f, the other ops' ρ f.
        (ratio, coef), box = self._split_fit(key, pts.phase)
        f = np.exp(_query_design(query, box, routed=False) @ coef)
        return f, ratio * f

    def _phase_points(self, key: tuple, phase: str) -> list[ContextPoint]:
        """The ``phase`` rows of decoder ``key`` = (executor, dims) that the factor law fits: those
        without fresh allocations over the mmap threshold (the others fit :meth:`fresh_alloc`)."""
        return [p for p in self.points.get(key, []) if p.phase == phase and not p.fresh_bytes]

    def fresh_alloc(self) -> FreshAlloc | None:
        """CPU: µs per MiB of first-touch pages, fitted once (least squares through the origin,
        not below 0) to what the rows with fresh allocations over :data:`FRESH_ALLOC_THRESHOLD`
        measure beyond their own decoder's factor law (fitted without them), less loop glue and
        framework cost. None on CUDA and where no row allocates over the threshold: such
        profiles never saw the cost, and their laws are fitted as before."""
        if self._fresh is False:
            self._fresh = None
            excess, mib = [], []
            one = lambda v: np.array([v])  # noqa: E731 - one design point
            for (ex, dims), cps in sorted(self.points.items()):
                for p in (p for p in cps if p.fresh_bytes):
                    dense = ex in OP_FOR_KV_CACHE
                    pts = Points.make(p.phase, one(p.batch), one(p.length if p.phase == "prefill" else 1),
                                      one(p.length), p.sparsity)
                    factors = self.factors(_decoder_spec(dims, 1), pts, ex if dense else "preallocated",
                                           None if dense else ex)
                    excess.append(p.target_us - float(_scaled(*factors, p.predicted_us, p.gemm_us)[0]))
                    mib.append(p.fresh_bytes / 2**20)
            if mib:
                x, y = np.asarray(mib), np.asarray(excess)
                self._fresh = FreshAlloc(max(0.0, float(x @ y / (x @ x))), len(x))
        return self._fresh

    def _narrow_points(self, key: tuple, phase: str) -> list[ContextPoint]:
        """The ``phase`` rows of the narrow-FFN companion of decoder ``key`` (none without one)."""
        return self._phase_points((key[0], self.narrow.get(key)), phase)

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
        if key not in self._interp:
            design, box = _design(key[-1], cps, routed)
            coef, *_ = np.linalg.lstsq(design, np.log([p.factor for p in cps]), rcond=None)
            self._interp[key] = (coef, box)
        coef, box = self._interp[key]
        return np.exp(_query_design(query, box, routed) @ coef)

    def _split_fit(self, key: tuple, phase: str) -> tuple[tuple[float, np.ndarray], tuple]:
        """``((ρ, law coefficients), box)`` of the law ``f(x) · (GEMM µs + ρ · other µs)`` (as
        :meth:`_fit`'s law, on a weighted op sum), fitted once per decoder ``key`` and ``phase``
        to its rows at both FFN widths: least squares in log time (scipy's trust-region solver from
        the one-factor fit and ρ = 1: deterministic), ρ within :data:`OTHER_RATIO_BOUNDS`.

        One ρ per decoder and phase, not a law of its own for each part: the rows' GEMM shares
        differ enough between the widths to weigh the two parts against each other, not to fit
        two slopes (free slopes put the prefill GEMM factor at 0.86-1.52 and the other ops' at
        0.5-5 over one calibration's rows)."""
        cached = key + (phase, "split")  # beside the one-factor law of the same decoder and phase
        if cached not in self._interp:
            from scipy.optimize import least_squares

            cps = self._phase_points(key, phase) + self._narrow_points(key, phase)
            design, box = _design(phase, cps, routed=False)
            gemm = np.array([p.gemm_us for p in cps])
            other = np.array([p.predicted_us for p in cps]) - gemm
            target = np.array([p.target_us for p in cps])
            one, *_ = np.linalg.lstsq(design, np.log(target / (gemm + other)), rcond=None)

            def residual(x: np.ndarray) -> np.ndarray:
                return design @ x[1:] + np.log((gemm + np.exp(x[0]) * other) / target)

            lo, hi = np.log(OTHER_RATIO_BOUNDS)
            free = [-np.inf] * len(one), [np.inf] * len(one)
            fit = least_squares(residual, np.concatenate([[0.0], one]), bounds=([lo, *free[0]], [hi, *free[1]]))
            self._interp[cached] = ((float(np.exp(fit.x[0])), fit.x[1:]), box)
        return self._interp[cached]

    def splits(self) -> list[dict]:
        """Per decoder with a narrow-FFN companion and phase: ρ, the other ops' factor over the
        GEMMs' (:meth:`_split_fit`), and the rows it was fitted to (for ``pis-profile info``)."""
        out = []
        for key, narrow_dims in sorted(self.narrow.items()):
            for phase in ("prefill", "decode"):
                narrow = self._narrow_points(key, phase)
                if narrow:
                    (ratio, _), _ = self._split_fit(key, phase)
                    out.append(dict(executor=key[0], **dict(zip(DIMS, key[1])), narrow_ffn=narrow_dims[1],
                                    phase=phase, other_over_gemm=ratio,
                                    rows=len(self._phase_points(key, phase)) + len(narrow)))
        return out

    def summary(self) -> list[dict]:
        """Every measured point with its factor (for ``pis-profile info`` and the docs)."""
        out = []
        for (ex, dims), cps in sorted(self.points.items()):
            for p in sorted(cps, key=lambda p: (p.phase, p.sparsity, p.batch, p.length)):
                out.append(dict(executor=ex, **dict(zip(DIMS, dims)), phase=p.phase, sparsity=p.sparsity,
                                batch=p.batch, length=p.length, measured_ms=p.measured_us / 1e3,
                                op_sum_ms=p.predicted_us / 1e3, gemm_ms=p.gemm_us / 1e3,
                                framework_ms=p.framework_us / 1e3, fresh_mib=p.fresh_bytes / 2**20,
                                factor=p.factor))
        return out


#: Bounds of ρ, the other ops' factor over the GEMMs' (:meth:`ContextModel._split_fit`).
OTHER_RATIO_BOUNDS: tuple[float, float] = (0.5, 5.0)


def _scaled(f_gemm: np.ndarray, f_other: np.ndarray, op_sum: "np.ndarray | float", gemm: "np.ndarray | float",
            head: "np.ndarray | float" = 0.0) -> np.ndarray:
    """The factors applied to an op sum: ``f_gemm`` on its GEMMs, ``f_other`` on the rest, its LM
    head (part of both sums) unscaled; exactly the one-factor law where the two are equal."""
    return f_other * (op_sum - head) + (f_gemm - f_other) * (gemm - head) + head


def _features(axes: np.ndarray, routed: bool) -> np.ndarray:
    """Log of the query axes (columns); a routed law's last axis, the sparsity, stays linear."""
    logged = axes.shape[1] - 1 if routed else axes.shape[1]
    return np.column_stack([np.log(axes[:, :logged]), axes[:, logged:]])


def _design(phase: str, cps: list[ContextPoint], routed: bool) -> tuple[np.ndarray, tuple]:
    """Least-squares design of a log-linear law over ``cps`` (intercept, then the axes that
    vary) and its box ``(used, lo, hi)`` for clamping queries."""
    axes = [[p.batch * p.length] if phase == "prefill" else [p.batch, p.length] for p in cps]
    if routed:
        axes = [a + [p.sparsity] for a, p in zip(axes, cps)]
    x = _features(np.asarray(axes, dtype=np.float64), routed)
    lo, hi = x.min(axis=0), x.max(axis=0)
    used = hi > lo
    return np.column_stack([np.ones(len(x)), x[:, used]]), (used, lo, hi)


def _query_design(query: list[np.ndarray], box: tuple, routed: bool) -> np.ndarray:
    """The design rows of ``query`` (axes as :func:`_design`'s), clamped to the measured box."""
    used, lo, hi = box
    q = np.clip(_features(np.column_stack([np.asarray(a, dtype=np.float64) for a in query]), routed), lo, hi)
    return np.column_stack([np.ones(len(q)), q[:, used]])


def _same_but_ffn(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    """Whether decoder dims ``a`` and ``b`` (:data:`DIMS`) differ in their FFN width alone."""
    return a[0] == b[0] and a[2:] == b[2:] and a[1] != b[1]


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


def decoder_totals(est: Estimator, spec: ModelSpec, phase: str, batch: np.ndarray, length: np.ndarray,
                   kv_cache: str = "concat", method: str = "dense", sparsity: float = 0.0) -> "Totals":
    """The op sums (:class:`pis.simulator.sweep.Totals`) of the decoder ``spec`` (``method`` at
    ``sparsity``; dense by default) without its LM head at each (batch, length), from per-op
    rows, with the cache discipline ``kv_cache`` of the executor that measured the row."""
    from pis.simulator.pruning import PruneOptions, build_ops
    from pis.simulator.sweep import evaluate

    batch, length = np.atleast_1d(batch), np.atleast_1d(length)
    seq, ctx = (length, length) if phase == "prefill" else (np.ones_like(length), length)
    pts = Points.make(phase, batch, seq, ctx, sparsity)
    groups = [g for g in build_ops(method, spec, pts, PruneOptions(kv_cache=kv_cache)) if g.name != LM_HEAD]
    return evaluate(est, groups, len(pts))


def decoder_op_sums(est: Estimator, spec: ModelSpec, phase: str, batch: np.ndarray, length: np.ndarray,
                    kv_cache: str = "concat", method: str = "dense",
                    sparsity: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted µs of the decoder (as :func:`decoder_totals`), the framework ops it issues
    per step, and how many of those are host-only loop glue."""
    tot = decoder_totals(est, spec, phase, batch, length, kv_cache, method, sparsity)
    return tot.latency_us, tot.host_ops, tot.glue_ops


def decoder_op_sum(est: Estimator, spec: ModelSpec, phase: str, batch: int, length: int,
                   kv_cache: str = "concat", method: str = "dense",
                   sparsity: float = 0.0) -> tuple[float, float, float]:
    """:func:`decoder_op_sums` at one (batch, length)."""
    pred, host_ops, glue = decoder_op_sums(est, spec, phase, np.array([batch]), np.array([length]),
                                           kv_cache, method, sparsity)
    return float(pred[0]), float(host_ops[0]), float(glue[0])
