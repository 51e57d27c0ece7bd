"""Hugging Face's framework cost on a CPU: time per step and per dispatch, apart from the ops' work.

Hugging Face's executor spends time that scales with the ops it issues, not with their work:
per forward pass (embedding, masks, rotary tables, the cache object, and the restart after the
last-level-cache eviction every whole-model timing does) and per dispatch (module calls and the
Python around each op). The in-model factor scales with the op sum, so it cannot carry a cost
that a model with fewer layers or smaller GEMMs keeps per dispatch; CPU ``--kv-cache concat``
predictions add this cost outside the factor. It is fitted to ``decoder_framework`` rows: the
Hugging Face decoder at a negligible width, at several depths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pis.simulator.estimator import Estimator
from pis.simulator.inmodel.rows import decoder_spec, decoder_sums

#: Relative residual at which the fit stops trusting a row fully (soft-L1 loss): these steps
#: take a few ms, and one disturbed measurement on a shared machine must not set the fit.
FRAMEWORK_FIT_SCALE = 0.05


@dataclass(frozen=True)
class FrameworkCost:
    """What Hugging Face's decoder costs per step apart from its ops' work (CPU, one phase)."""

    step_us: float
    us_per_dispatch: float
    #: rows it was fitted to
    rows: int

    def cost_us(self, dispatches: "np.ndarray | float") -> np.ndarray:
        """Framework µs of a step that issues ``dispatches`` dispatches."""
        return self.step_us + self.us_per_dispatch * np.asarray(dispatches, dtype=np.float64)


def fit_framework(est: Estimator, decoders: dict[tuple, tuple]) -> dict[str, FrameworkCost]:
    """Per phase, the :class:`FrameworkCost` of ``decoder_framework`` rows (grouped as
    :func:`pis.simulator.inmodel.rows.decoder_groups` groups them): measured − op sum =
    step_us + us_per_dispatch · dispatches, both non-negative, over the rows' depths. A phase
    needs rows at two dispatch counts at least.

    Robust, not plain least squares: residuals are relative to the measured time, with scipy's
    soft-L1 loss beyond :data:`FRAMEWORK_FIT_SCALE`, started from the ``nnls`` solution.
    """
    from scipy.optimize import least_squares, nnls

    by_phase: dict[str, list] = {}
    for (_, dims, layers, phase, _), (batch, length, median_us) in decoders.items():
        sums = decoder_sums(est, decoder_spec(dims, layers), phase, batch, length, "concat")
        by_phase.setdefault(phase, []).append((sums.dispatches, sums.op_sum_us, median_us))
    out = {}
    for phase, parts in by_phase.items():
        dispatches, op_sum, measured = (np.concatenate(c).astype(np.float64) for c in zip(*parts))
        if np.unique(dispatches).size < 2:
            continue
        design = np.column_stack([np.ones(len(dispatches)), dispatches])
        start, _ = nnls(design, measured - op_sum)
        fit = least_squares(lambda x: (design @ x + op_sum - measured) / measured, start,
                            bounds=(0.0, np.inf), loss="soft_l1", f_scale=FRAMEWORK_FIT_SCALE)
        out[phase] = FrameworkCost(float(fit.x[0]), float(fit.x[1]), len(dispatches))
    return out
