"""Whole-decoder rows: each measured decoder beside the op sum the per-op rows predict for it.

A profile's whole-decoder rows time a small decoder end to end (no LM head) on the executors
``pis-validate`` runs. For each row this module builds the same decoder's op graph, with the
executor's cache discipline, and sums its predicted ops: the pair (measured, op sum) is what
every term of the in-model correction is fitted to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pis.models import ModelSpec
from pis.pruned import PruneOptions
from pis.profiles.schema import DECODER_OPS, FRAMEWORK_OP, GRAPH_DECODER_OP, ROUTED_DECODER_OPS, STATUS_OK
from pis.simulator.estimator import Estimator
from pis.simulator.opgraph import LM_HEAD
from pis.simulator.opsum import OpSums, evaluate
from pis.simulator.points import Points
from pis.simulator.pruning import build_ops

#: Dimensions that identify the decoder a whole-decoder row measured.
DIMS: tuple[str, ...] = ("hidden", "ffn", "heads", "kv_heads", "head_dim")
#: The whole-decoder op measured for each KV-cache discipline of :class:`PruneOptions`.
OP_FOR_KV_CACHE: dict[str, str] = dict(zip(("concat", "preallocated"), DECODER_OPS))
#: The executor of graph execution's rows (the dense decoder replayed as one CUDA graph).
GRAPH_EXECUTOR = "graph"
#: The executor each whole-decoder op measured: a dense cache discipline, graph execution, or a
#: routed family.
EXECUTOR_OF_OP: dict[str, str] = {**{op: kv for kv, op in OP_FOR_KV_CACHE.items()}, GRAPH_DECODER_OP: GRAPH_EXECUTOR,
                                  **{op: family for family, op in ROUTED_DECODER_OPS.items()}}


@dataclass(frozen=True, kw_only=True)
class DecoderRow:
    """One measured whole decoder and what the per-op rows predict for it (µs per step)."""

    phase: str
    batch: int
    #: prompt length in prefill, cached tokens in decode
    length: int
    measured_us: float
    #: the op sum predicted for the same decoder
    op_sum_us: float
    #: dispatches the decoder issues per step (:mod:`pis.simulator.dispatch`)
    dispatches: float = 0.0
    #: routed decoders: the sparsity they ran at (0 for dense rows)
    sparsity: float = 0.0
    #: loop glue the prediction adds outside the factor (routed rows, CPU)
    glue_us: float = 0.0
    #: Hugging Face's framework cost added outside the factor (concat rows, CPU)
    framework_us: float = 0.0
    #: the op sum's GEMMs
    gemm_us: float = 0.0
    #: bytes allocated afresh above the mmap threshold per step (CPU rows)
    fresh_bytes: float = 0.0
    #: kernel calls of the predicted step
    kernels: float = 0.0

    @property
    def target_us(self) -> float:
        """What the factors must explain: measured − loop glue − framework."""
        return self.measured_us - self.glue_us - self.framework_us

    @property
    def factor(self) -> float:
        """(measured − loop glue − framework) / op sum: what the factor must multiply."""
        return self.target_us / self.op_sum_us


def decoder_spec(dims: tuple[int, ...], layers: int) -> ModelSpec:
    """The decoder (no vocabulary: no LM head) of a whole-decoder row's dimensions."""
    return ModelSpec("decoder", **dict(zip(DIMS, dims)), layers=layers, vocab=1)


def decoder_groups(columns: dict[str, np.ndarray], dtype: str) -> dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Measured whole-decoder rows of ``dtype`` (profile :meth:`~pis.profiles.store.Profile.columns`)
    per decoder, ``(op, dims, layers, phase, sparsity) -> (batch, length, median_us)`` arrays, so
    that each decoder's op sums are one vectorized evaluation."""
    c = columns
    wanted = set(EXECUTOR_OF_OP) | {FRAMEWORK_OP}
    sel = (c["status"] == STATUS_OK) & (c["dtype"] == dtype) & np.array([o in wanted for o in c["op"]], dtype=bool)
    routed = set(ROUTED_DECODER_OPS.values())
    groups: dict[tuple, list] = {}
    for i in np.flatnonzero(sel):
        op = str(c["op"][i])
        phase = "prefill" if int(c["causal"][i]) else "decode"
        length = int(c["q_len"][i]) if phase == "prefill" else int(c["kv_len"][i])
        s = float(c["sparsity_pct"][i]) / 100.0 if op in routed else 0.0
        key = (op, tuple(int(c[d][i]) for d in DIMS), int(c["layers"][i]), phase, s)
        groups.setdefault(key, []).append((int(c["batch"][i]), length, float(c["median_us"][i])))
    return {k: tuple(np.array(v) for v in zip(*rows)) for k, rows in groups.items()}


def decoder_sums(est: Estimator, spec: ModelSpec, phase: str, batch: np.ndarray, length: np.ndarray,
                 kv_cache: str = "concat", method: str = "dense", sparsity: float = 0.0,
                 execution: str = "eager") -> OpSums:
    """The op sums of the decoder ``spec`` (``method`` at ``sparsity``; dense by default) without
    its LM head at each (batch, length), with the cache discipline ``kv_cache`` and the
    ``execution`` of the executor that measured the row (pis's op graphs)."""
    batch, length = np.atleast_1d(batch), np.atleast_1d(length)
    seq, ctx = (length, length) if phase == "prefill" else (np.ones_like(length), length)
    pts = Points.make(phase, batch, seq, ctx, sparsity)
    opts = PruneOptions(kv_cache=kv_cache, execution=execution, op_graph="pis")
    groups = [g for g in build_ops(method, spec, pts, opts) if g.name != LM_HEAD]
    return evaluate(est, groups, len(pts), launch_floor=execution == "eager")
