"""Op sums: an op graph's predicted time, FLOPs, bytes and speed of light, summed per design point.

:func:`evaluate` prices every op group of a graph with the estimator (one vectorized call per
group over all design points) and sums what the in-model correction and the reports need:
the op sum and its GEMM and LM-head parts, the dispatches the host issues, the loop glue, and
the bytes allocated afresh above the allocator's mmap threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from pis.allocator import FRESH_ALLOC_THRESHOLD
from pis.profiles.schema import DTYPE_BYTES, QUANTIZED_GEMM, op_bytes, op_flops
from pis.simulator.dispatch import GLUE_OP, STEP_DISPATCHES
from pis.simulator.estimator import SOURCE_NAMES, Estimator
from pis.simulator.opgraph import GEMM_CATEGORY, LM_HEAD
from pis.simulator.points import OpGroup

#: GEMMs with quantized weights: no whole-decoder row holds them (:attr:`OpSums.outside_us`).
QUANTIZED_OPS: frozenset[str] = frozenset(QUANTIZED_GEMM.values())

#: Ops whose output the executors allocate anew every step: the ``torch.cat`` cache append, and
#: the K/V gathers priced as one (:mod:`pis.simulator.pruning`).
FRESH_OUTPUT_OPS: frozenset[str] = frozenset({"kv_concat"})


def fresh_alloc_bytes(op: str, shape: "dict[str, np.ndarray]", itemsize: int) -> "np.ndarray | float":
    """Bytes one call of ``op`` allocates afresh above :data:`pis.allocator.FRESH_ALLOC_THRESHOLD`
    (0 below it, and for ops that write into existing tensors)."""
    if op not in FRESH_OUTPUT_OPS:
        return 0.0
    out = np.asarray(shape["numel"], dtype=np.float64) * itemsize
    return np.where(out > FRESH_ALLOC_THRESHOLD, out, 0.0)


@dataclass
class OpSums:
    """Per-design-point sums over the op groups of one vectorized simulation (arrays of N)."""

    #: predicted µs of every op, summed (kernel time on a GPU, with the launch floor in eager)
    op_sum_us: np.ndarray
    flops: np.ndarray
    bytes: np.ndarray
    #: speed-of-light µs, summed
    sol_us: np.ndarray
    extrapolated: np.ndarray
    #: µs of ops answered by each estimator path (exact, interp, roofline), shape (3, N)
    by_source_us: np.ndarray
    #: µs per breakdown category
    by_category_us: dict[str, np.ndarray] = field(default_factory=dict)
    #: dispatches the host issues for one forward pass (:mod:`pis.simulator.dispatch`)
    dispatches: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: of those, the dispatches of loop-glue groups (no kernel, in no op's timing)
    glue_dispatches: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: µs of GEMMs no whole-decoder row times, added as they are outside every in-model law: the
    #: LM head (rows time decoders without one) and GEMMs with quantized weights (rows time
    #: native weights; on a CPU their op sums alone match quantized models, docs/fidelity.md)
    outside_us: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: bytes the step allocates afresh above the allocator's mmap threshold (first-touch pages)
    fresh_bytes: np.ndarray = field(default_factory=lambda: np.zeros(()))
    #: kernel calls of the step (every op group's count but loop glue's)
    calls: np.ndarray = field(default_factory=lambda: np.zeros(()))

    @property
    def gemm_us(self) -> np.ndarray:
        """µs of the GEMMs (category ``gemm``: projections, FFN, low-rank factors, 2:4 and the
        LM head; routers' GEMMs count as routing), which the CPU factor law weighs apart from
        the other ops."""
        return np.broadcast_to(self.by_category_us.get(GEMM_CATEGORY, 0.0), self.op_sum_us.shape)

    def select(self, mask: np.ndarray) -> "OpSums":
        """The sums of the design points where ``mask`` is true."""
        return OpSums(self.op_sum_us[mask], self.flops[mask], self.bytes[mask], self.sol_us[mask],
                      self.extrapolated[mask], self.by_source_us[:, mask],
                      {k: np.broadcast_to(v, mask.shape)[mask] for k, v in self.by_category_us.items()},
                      self.dispatches[mask], self.glue_dispatches[mask], self.outside_us[mask],
                      self.fresh_bytes[mask], self.calls[mask])


def evaluate(est: Estimator, groups: Sequence[OpGroup], n: int, launch_floor: bool = True) -> OpSums:
    """Sum predicted time, FLOPs, bytes and speed-of-light time of ``groups`` over ``n`` points;
    without ``launch_floor`` (graph execution: no op is launched from the host) every op costs
    its kernel time alone."""
    def zeros() -> np.ndarray:
        return np.zeros(n)

    sums = OpSums(zeros(), zeros(), zeros(), zeros(), np.zeros(n, dtype=bool), np.zeros((len(SOURCE_NAMES), n)),
                  dispatches=np.full(n, STEP_DISPATCHES), glue_dispatches=zeros(), outside_us=zeros(),
                  fresh_bytes=zeros(), calls=zeros())
    dtype = est.dtype
    for g in groups:
        count = np.broadcast_to(g.count, (n,))
        if not count.any():
            continue
        sums.dispatches += count * g.dispatches
        if g.op == GLUE_OP:  # loop glue: no kernel, no device time
            sums.glue_dispatches += count * g.dispatches
            continue
        sums.calls += count
        shape = {k: np.broadcast_to(v, (n,)) for k, v in g.shape.items()}
        pred = est.predict(g.op, shape)
        t = count * (pred.time_us if launch_floor else pred.kernel_us)
        sums.op_sum_us += t
        if g.name == LM_HEAD or g.op in QUANTIZED_OPS:
            sums.outside_us += t
        if g.op in FRESH_OUTPUT_OPS:  # skip the array work for the many ops that never are
            sums.fresh_bytes += count * fresh_alloc_bytes(g.op, shape, DTYPE_BYTES[dtype])
        work = count * np.broadcast_to(g.work_scale, (n,))
        sums.flops += work * op_flops(g.op, shape)
        sums.bytes += work * op_bytes(g.op, shape, dtype)
        sums.sol_us += work * est.speed_of_light_us(g.op, shape)
        sums.extrapolated |= pred.extrapolated & (count > 0)
        np.add.at(sums.by_source_us, (pred.source.astype(np.intp), np.arange(n)), t)
        cat = g.category or "other"
        sums.by_category_us[cat] = sums.by_category_us.get(cat, 0.0) + t
    return sums
