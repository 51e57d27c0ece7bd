"""Graph replay: what one CUDA-graph step costs against the sum of its ops timed alone.

Calibration times each op as a replay of its own one-node graph, so each op time holds the
launch of a graph; a captured decoder launches one graph for hundreds of kernels, which then
follow each other with a far smaller gap. The op sum therefore overstates a captured step by
about a constant per kernel, and more so the smaller the kernels (decode at small batch). The
profile's graph-replayed dense decoders (``dense_decoder_graph`` rows) fit, per phase,

    step = factor · op sum + us_per_kernel · kernels

by least squares (``us_per_kernel`` is usually negative: the launch each lone op paid and the
step does not). Rows of one decoder share their kernel count, so with a single decoder shape the
per-kernel term is the intercept divided by that count, and a pruned model with fewer kernels
(static depth) keeps the per-kernel part per kernel, not per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pis.simulator.inmodel.rows import DecoderRow


@dataclass(frozen=True)
class GraphReplay:
    """The graph-replay law of one phase."""

    factor: float
    us_per_kernel: float
    #: rows it was fitted to
    rows: int

    def latency_us(self, op_sum_us: np.ndarray, kernels: np.ndarray, outside_us: "np.ndarray | float" = 0.0) -> np.ndarray:
        """Step time of ``kernels`` kernels whose ops sum to ``op_sum_us`` (``outside_us`` of it ops
        no row holds, the LM head and quantized GEMMs: unscaled)."""
        outside = np.asarray(outside_us, dtype=np.float64)
        return self.factor * (np.asarray(op_sum_us) - outside) + outside + self.us_per_kernel * np.asarray(kernels)


def fit_graph_replay(rows: list[DecoderRow]) -> dict[str, GraphReplay]:
    """Per phase, the :class:`GraphReplay` of graph-replayed decoder rows (one row: the factor
    alone). The fit keeps every step positive at the rows' own kernel counts."""
    out = {}
    for phase in ("prefill", "decode"):
        rs = [r for r in rows if r.phase == phase]
        if not rs:
            continue
        op_sum = np.array([r.op_sum_us for r in rs])
        kernels = np.array([r.kernels for r in rs])
        measured = np.array([r.measured_us for r in rs])
        if len(rs) >= 2 and np.ptp(op_sum) > 0 and kernels.max() > 0:
            design = np.column_stack([op_sum, kernels])
            (f, k), *_ = np.linalg.lstsq(design, measured, rcond=None)
            if f <= 0 or (f * op_sum + k * kernels <= 0).any():
                f, k = float(np.median(measured / op_sum)), 0.0
        else:
            f, k = float(np.median(measured / op_sum)), 0.0
        out[phase] = GraphReplay(float(f), float(k), len(rs))
    return out
