"""The in-model correction: what a real decoder adds to the sum of its isolated ops.

Calibration times every op alone; a model runs them in a framework, with cold memory, glue and
(on a GPU, eagerly) a host that must issue each op. A profile's whole-decoder rows measure that,
and this class fits one term per concern to them (``docs/model.md``):

* the factor law (CPU): ops run slower in the model than alone (:mod:`.factor_law`);
* Hugging Face's framework cost (CPU, ``--kv-cache concat``): per step and per dispatch
  (:mod:`.framework`);
* first-touch pages (CPU): fresh tensors above the mmap threshold (:mod:`.first_touch`);
* loop glue: the routed executors' host-only dispatches, at the measured ``host_glue`` cost;
* host issue (CUDA, eager): the step is no faster than the host issues its dispatches
  (:mod:`.host_issue`);
* graph replay (CUDA graph execution): a captured step launches one graph, not one per op
  (:mod:`.graph_replay`).

:meth:`InModelCorrection.terms` resolves them at a sweep's design points into one
:class:`Terms`, which turns each design point's :class:`~pis.simulator.opsum.OpSums` into a
latency. Profiles without whole-decoder rows get the plain op sum (on CUDA with the launch
overhead as a floor on the host's time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pis.models import ModelSpec
from pis.simulator.estimator import Estimator
from pis.simulator.inmodel.factor_law import FactorLaws, scaled
from pis.simulator.inmodel.first_touch import FirstTouch, fit_first_touch
from pis.simulator.inmodel.framework import FrameworkCost, fit_framework
from pis.simulator.inmodel.graph_replay import GraphReplay, fit_graph_replay
from pis.simulator.inmodel.host_issue import HostIssue, fit_host_issue
from pis.simulator.inmodel.rows import (DIMS, EXECUTOR_OF_OP, GRAPH_EXECUTOR, OP_FOR_KV_CACHE, DecoderRow,
                                        decoder_groups, decoder_spec, decoder_sums)
from pis.simulator.opsum import OpSums
from pis.simulator.points import Points
from pis.profiles.schema import FRAMEWORK_OP


@dataclass(frozen=True, kw_only=True)
class Terms:
    """The in-model correction resolved at N design points: :meth:`latency_us` of their op sums.

    CPU: the op sum under the factors (GEMMs and other ops; the LM head, which no row times,
    unscaled), plus loop glue, first-touch pages and Hugging Face's framework cost. CUDA eager:
    the host-issue model. Graph execution: the graph-replay law. None of them: the op sum.
    """

    #: CPU: factor on the GEMMs and on the other ops (arrays of N)
    gemm_factor: np.ndarray | None = None
    other_factor: np.ndarray | None = None
    #: CPU: µs per loop-glue dispatch (the measured ``host_glue``, else the launch overhead)
    glue_us_per_dispatch: float = 0.0
    #: CPU: Hugging Face's framework cost, and where Hugging Face runs the step
    framework: FrameworkCost | None = None
    framework_on: np.ndarray | None = None
    #: CPU: first-touch cost of fresh allocations
    first_touch: FirstTouch | None = None
    #: CUDA eager: the host-issue model, and the measured µs per loop-glue dispatch if any
    host_issue: HostIssue | None = None
    host_glue_us_per_dispatch: float | None = None
    #: graph execution: the graph-replay law (None: the op sum as it is)
    graph_replay: GraphReplay | None = None

    def latency_us(self, sums: OpSums) -> np.ndarray:
        """In-model latency (µs) of each design point whose op sums are ``sums``."""
        op_sum = np.asarray(sums.op_sum_us, dtype=np.float64)
        outside = np.asarray(sums.outside_us, dtype=np.float64)
        if self.graph_replay is not None:
            return self.graph_replay.latency_us(op_sum, sums.calls, outside)
        if self.host_issue is not None:
            return self.host_issue.latency_us(np.asarray(sums.dispatches), op_sum,
                                              np.asarray(sums.glue_dispatches, dtype=np.float64),
                                              self.host_glue_us_per_dispatch, outside)
        if self.gemm_factor is None:
            return op_sum
        out = scaled(self.gemm_factor, self.other_factor, op_sum, np.asarray(sums.gemm_us, dtype=np.float64), outside)
        out = out + self.glue_us_per_dispatch * np.asarray(sums.glue_dispatches, dtype=np.float64)
        if self.first_touch is not None:
            out = out + self.first_touch.cost_us(sums.fresh_bytes)
        if self.framework is not None:
            out = out + np.where(self.framework_on, self.framework.cost_us(sums.dispatches), 0.0)
        return out


class InModelCorrection:
    """The in-model correction of one profile, fitted to its whole-decoder rows on first use
    (or restored from :meth:`state`)."""

    def __init__(self, est: Estimator, state: dict | None = None) -> None:
        #: CUDA: eager steps are bound by the host issuing dispatches; a CPU's op timings
        #: already include their dispatch
        self.host_bound = est.is_cuda
        self._launch_us = est.launch_us_per_op
        #: measured host µs per loop-glue dispatch (None: the profile has no host_glue row)
        self._glue_us = est.glue_us_per_dispatch
        #: CPU: µs per loop-glue dispatch (measured host_glue, else the launch overhead)
        self._glue_floor_us = self._glue_us if self._glue_us is not None else (self._launch_us or 0.0)
        if state is not None:
            self._restore(state)
            return
        decoders = decoder_groups(est.profile.columns(), est.dtype)
        #: CPU, per phase: Hugging Face's framework cost, priced outside the concat factor
        self.framework: dict[str, FrameworkCost] = ({} if self.host_bound else fit_framework(
            est, {k: v for k, v in decoders.items() if k[0] == FRAMEWORK_OP}))
        #: (executor, dims) -> measured rows; executor: "concat", "preallocated" or a family
        self.rows: dict[tuple, list[DecoderRow]] = {}
        for (op, dims, layers, phase, s), (batch, length, median_us) in decoders.items():
            if op == FRAMEWORK_OP:
                continue
            executor, spec = EXECUTOR_OF_OP[op], decoder_spec(dims, layers)
            if executor == GRAPH_EXECUTOR:
                sums = decoder_sums(est, spec, phase, batch, length, "preallocated", execution="graph")
            elif executor in OP_FOR_KV_CACHE:
                sums = decoder_sums(est, spec, phase, batch, length, executor)
            else:
                sums = decoder_sums(est, spec, phase, batch, length, "preallocated", method=executor, sparsity=s)
            fw = self.framework.get(phase) if executor == "concat" and not self.host_bound else None
            framework_us = fw.cost_us(sums.dispatches) if fw else np.zeros(len(batch))
            self.rows.setdefault((executor, dims), []).extend(
                DecoderRow(phase=phase, batch=int(batch[i]), length=int(length[i]), measured_us=float(median_us[i]),
                           op_sum_us=float(sums.op_sum_us[i]), dispatches=float(sums.dispatches[i]), sparsity=s,
                           glue_us=float(sums.glue_dispatches[i]) * self._glue_floor_us,
                           framework_us=float(framework_us[i]), gemm_us=float(sums.gemm_us[i]),
                           fresh_bytes=0.0 if self.host_bound else float(sums.fresh_bytes[i]),
                           kernels=float(sums.calls[i]))
                for i in range(len(batch)))
        self.laws = FactorLaws({k: v for k, v in self.rows.items() if k[0] != GRAPH_EXECUTOR})
        self._host: dict[tuple, HostIssue] | None = None  # fitted on first use
        self._first_touch: FirstTouch | None | bool = False  # fitted on first use (None: no rows)
        self._graph: dict[tuple, GraphReplay] | None = None  # fitted on first use

    def __bool__(self) -> bool:
        return bool(self.rows)

    def state(self) -> dict:
        """Everything fitted, every law included (fitted now if it was not yet): what
        ``InModelCorrection(est, state)`` restores without the whole-decoder op sums or scipy."""
        return dict(rows={k: [vars(r) for r in rs] for k, rs in self.rows.items()},
                    framework={p: (f.step_us, f.us_per_dispatch, f.rows) for p, f in self.framework.items()},
                    laws=self.laws.fit_all(),
                    host={k: (h.us_per_dispatch, h.device_factor, h.p, h.rows)
                          for k, h in (self.host_issue_fits().items() if self.host_bound else ())},
                    graph={k: (g.factor, g.us_per_kernel, g.rows) for k, g in self.graph_replay_fits().items()},
                    first_touch=None if self.first_touch() is None else
                    (self.first_touch().us_per_mib, self.first_touch().rows))

    def _restore(self, state: dict) -> None:
        self.rows = {k: [DecoderRow(**r) for r in rs] for k, rs in state["rows"].items()}
        self.framework = {p: FrameworkCost(*f) for p, f in state["framework"].items()}
        self.laws = FactorLaws.from_fits({k: v for k, v in self.rows.items() if k[0] != GRAPH_EXECUTOR},
                                         state["laws"])
        self._graph = {k: GraphReplay(*g) for k, g in state["graph"].items()}
        self._host = {k: HostIssue(*h) for k, h in state["host"].items()} if self.host_bound else None
        ft = state["first_touch"]
        self._first_touch = None if ft is None else FirstTouch(*ft)

    def has_own_rows(self, method: str) -> bool:
        """Whether ``method``'s own executor has whole-decoder rows (used on a CPU)."""
        return not self.host_bound and any(ex == method for ex, _ in self.rows)

    def terms(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat", method: str | None = None,
              execution: str = "eager") -> Terms:
        """The correction at ``pts``, resolved once for every method a sweep evaluates there (or
        for ``method`` where it has its own rows, :meth:`has_own_rows`).

        Graph execution: the factor law of the profile's graph-replayed dense decoders (one
        factor; 1 without such rows); no host issue, loop glue or framework cost, which a graph
        replay does not run.

        The LM head is priced at its own row on both devices, never scaled: no whole-decoder row
        includes it, so nothing fitted to them describes it. With ``kv_cache="concat"``
        (Hugging Face's executor) on a CPU profile that measured it, Hugging Face's framework
        cost adds to the step outside the factor (not at s > 0 of a family with its own rows,
        whose reference executor has no such cost). Fresh allocations add their first-touch
        cost on a CPU only: the CUDA caching allocator reuses its blocks.
        """
        if execution == "graph":
            return Terms(graph_replay=self.graph_replay(spec, pts.phase))
        if self.host_bound:
            return Terms(host_issue=self.host_issue(spec, pts.phase, kv_cache),
                         host_glue_us_per_dispatch=self._glue_us)
        f_gemm, f_other = self.factors(spec, pts, kv_cache, method)
        fw = self.framework.get(pts.phase) if kv_cache == "concat" else None
        # Hugging Face runs the step unless the family's own (reference) executor does.
        hf = (pts.sparsity == 0) if method and self.has_own_rows(method) else np.ones(len(pts), dtype=bool)
        return Terms(gemm_factor=f_gemm, other_factor=f_other, glue_us_per_dispatch=self._glue_floor_us,
                     framework=fw, framework_on=hf, first_touch=self.first_touch())

    def graph_replay_fits(self) -> dict[tuple, GraphReplay]:
        """The fitted graph-replay laws, keyed (dims, phase)."""
        if self._graph is None:
            self._graph = {(dims, phase): law for (ex, dims), rows in self.rows.items() if ex == GRAPH_EXECUTOR
                           for phase, law in fit_graph_replay(rows).items()}
        return self._graph

    def graph_replay(self, spec: ModelSpec, phase: str) -> GraphReplay | None:
        """The graph-replay law of ``spec``'s nearest graph-replayed decoder (None: no such rows)."""
        measured = sorted({dims for (ex, dims) in self.rows if ex == GRAPH_EXECUTOR})
        if not measured:
            return None
        want = np.log([spec.hidden, spec.ffn])
        dims = min(measured, key=lambda d: float(np.abs(np.log(d[:2]) - want).sum()))
        return self.graph_replay_fits().get((dims, phase))

    def host_issue_fits(self) -> dict[tuple, HostIssue]:
        """The fitted host-issue models, keyed (kv_cache, dims, phase); fitted on first use."""
        if self._host is None:
            self._host = fit_host_issue({k: v for k, v in self.rows.items() if k[0] in OP_FOR_KV_CACHE})
        return self._host

    def host_issue(self, spec: ModelSpec, phase: str, kv_cache: str = "concat") -> HostIssue | None:
        """The host-issue model for ``spec``'s nearest measured decoder and ``phase``.

        Without whole-decoder rows: the profile's launch overhead as the host cost per dispatch,
        no device factor and a plain max, a floor (None when the profile has neither).
        """
        dims = self.laws.nearest_dims(spec, kv_cache)
        fit = self.host_issue_fits().get((kv_cache, dims, phase)) if dims else None
        if fit is None and self._launch_us is not None:
            fit = HostIssue(self._launch_us, 1.0, float("inf"), 0)
        return fit

    def factors(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat",
                method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(GEMM factor, factor on the other ops) at every design point of ``pts`` (ones without
        rows): the dense decoder's of ``kv_cache``, or at s > 0 ``method``'s own where it has
        rows (one factor on both parts: its rows are at one width)."""
        dense = self.laws.factors(spec, pts, kv_cache, routed=False)
        if dense is None:
            dense = (np.ones(len(pts)), np.ones(len(pts)))
        own = self.laws.factors(spec, pts, method, routed=True) if method and self.has_own_rows(method) else None
        if own is None:
            return dense
        routed = pts.sparsity > 0
        return np.where(routed, own[0], dense[0]), np.where(routed, own[1], dense[1])

    def factor(self, spec: ModelSpec, pts: Points, kv_cache: str = "concat", method: str | None = None) -> np.ndarray:
        """The one in-model factor at ``pts`` where the law has one (:meth:`factors`); raises
        ValueError where the GEMMs and the other ops have their own."""
        f_gemm, f_other = self.factors(spec, pts, kv_cache, method)
        if not np.array_equal(f_gemm, f_other):
            raise ValueError("this profile's law has two factors (GEMMs, other ops): use factors()")
        return f_gemm

    def first_touch(self) -> FirstTouch | None:
        """CPU: µs per MiB of first-touch pages, fitted once to what the rows with fresh
        allocations measure beyond their own decoder's factor law (fitted without them), less
        loop glue and framework cost. None on CUDA and where no row allocates over the threshold."""
        if self._first_touch is False:
            excess, mib = [], []
            one = lambda v: np.array([v])  # noqa: E731 - one design point
            for (ex, dims), rows in sorted(self.rows.items()):
                for r in (r for r in rows if r.fresh_bytes):
                    dense = ex in OP_FOR_KV_CACHE
                    pts = Points.make(r.phase, one(r.batch), one(r.length if r.phase == "prefill" else 1),
                                      one(r.length), r.sparsity)
                    factors = self.factors(decoder_spec(dims, 1), pts, ex if dense else "preallocated",
                                           None if dense else ex)
                    excess.append(r.target_us - float(scaled(*factors, r.op_sum_us, r.gemm_us)[0]))
                    mib.append(r.fresh_bytes / 2**20)
            self._first_touch = fit_first_touch(mib, excess)
        return self._first_touch

    def splits(self) -> list[dict]:
        """ρ per decoder with a narrow-FFN companion and phase (:meth:`FactorLaws.splits`)."""
        return self.laws.splits()

    def summary(self) -> list[dict]:
        """Every measured row with its factor (for ``pis-profile info`` and the docs)."""
        out = []
        for (ex, dims), rows in sorted(self.rows.items()):
            for r in sorted(rows, key=lambda r: (r.phase, r.sparsity, r.batch, r.length)):
                out.append(dict(executor=ex, **dict(zip(DIMS, dims)), phase=r.phase, sparsity=r.sparsity,
                                batch=r.batch, length=r.length, measured_ms=r.measured_us / 1e3,
                                op_sum_ms=r.op_sum_us / 1e3, gemm_ms=r.gemm_us / 1e3,
                                framework_ms=r.framework_us / 1e3, fresh_mib=r.fresh_bytes / 2**20,
                                factor=r.factor))
        return out
