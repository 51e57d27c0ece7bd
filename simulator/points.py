"""Vectorized design points and op groups: the contract between pruning families and the estimator.

A pruning family maps (model spec, design points, options) to a list of :class:`OpGroup`.
Every shape array and count has one entry per design point (or broadcasts to it), so one
call covers a whole sweep slice — this is what makes sweeps fast (numpy over the points, not
a Python loop per point).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from pis.simulator.dispatch import DISPATCHES_PER_CALL

PHASES = ("prefill", "decode")


@dataclass(frozen=True)
class Points:
    """N design points of one phase; every array has shape (N,)."""

    phase: str
    batch: np.ndarray
    seq_len: np.ndarray
    context: np.ndarray
    sparsity: np.ndarray

    @staticmethod
    def make(phase: str, batch: object, seq_len: object, context: object, sparsity: object) -> "Points":
        """Broadcast scalars or arrays to N points (ints for sizes, float for sparsity)."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        b, s, c, sp = np.broadcast_arrays(np.asarray(batch), np.asarray(seq_len),
                                          np.asarray(context), np.asarray(sparsity, dtype=np.float64))
        return Points(phase, np.atleast_1d(b).astype(np.int64), np.atleast_1d(s).astype(np.int64),
                      np.atleast_1d(c).astype(np.int64), np.atleast_1d(sp).astype(np.float64))

    def __len__(self) -> int:
        return int(self.batch.shape[0])

    @property
    def tokens(self) -> np.ndarray:
        """Rows of every projection GEMM (M): batch x seq in prefill, batch in decode."""
        return self.batch * self.seq_len if self.phase == "prefill" else self.batch.copy()

    @property
    def q_len(self) -> np.ndarray:
        return self.seq_len if self.phase == "prefill" else np.ones_like(self.batch)

    @property
    def kv_len(self) -> np.ndarray:
        """Keys each query attends over: the prompt in prefill, the cache plus the new token in decode."""
        return self.seq_len if self.phase == "prefill" else self.context + 1

    @property
    def attn_op(self) -> str:
        return "attn_prefill" if self.phase == "prefill" else "attn_decode"


@dataclass(frozen=True)
class OpGroup:
    """Identical op calls: ``count`` calls of ``op`` with ``shape`` per forward pass.

    ``name`` is the op's role in the model ("q_proj", "attention", "router", ...) and is what
    ``--breakdown`` groups by; ``op`` is the profile op kind whose latency is used.
    """

    name: str
    op: str
    shape: Mapping[str, np.ndarray]
    count: np.ndarray
    #: op type for breakdowns: "gemm", "attention", "norm", "elementwise", "routing", "embedding",
    #: "kv_cache", "glue"
    category: str = field(default="")
    #: fraction of the op's FLOPs and bytes that are useful work (theoretical bound and FLOP
    #: counts only; latency still comes from the full shape). Unstructured sparsity uses it:
    #: masked weights run dense kernels, but a perfect sparse kernel would do (1 - s) of the work.
    work_scale: np.ndarray = field(default_factory=lambda: np.ones(()))
    #: dispatches the host issues for one call; None: the op kind's default
    #: (:data:`pis.simulator.dispatch.DISPATCHES_PER_CALL`)
    dispatches: "np.ndarray | None" = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "count", np.asarray(self.count, dtype=np.float64))
        object.__setattr__(self, "work_scale", np.asarray(self.work_scale, dtype=np.float64))
        calls = DISPATCHES_PER_CALL.get(self.op, 1.0) if self.dispatches is None else self.dispatches
        object.__setattr__(self, "dispatches", np.asarray(calls, dtype=np.float64))
        object.__setattr__(self, "shape", {k: np.asarray(v) for k, v in self.shape.items()})
