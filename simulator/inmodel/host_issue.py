"""Host issue: an eager GPU step is no faster than the CPU can issue its dispatches.

A CUDA profile's timings are kernel times (events around the op, CUDA-graph replay): what a
graph-captured engine achieves. An eager PyTorch decoder also has to issue every dispatch from
Python, and while the host is behind, the GPU idles. A forward pass issues

    H = us_per_dispatch · dispatches

and the step takes ``combine(H, D)`` for D the device time: the larger of the two when one
dominates, more than either where they are close, because the host falls behind on some ops and
the GPU on others. ``us_per_dispatch``, the device factor (D = factor · op sum: cache copies,
the allocator, kernels between the ops) and the sharpness ``p`` are fitted per profile to its
whole-decoder rows, which range from host-bound (small batch) to device-bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pis.simulator.inmodel.rows import DecoderRow

#: Bounds of the fit: host µs per dispatch, and the device factor.
HOST_US_BOUNDS: tuple[float, float] = (0.5, 200.0)
DEVICE_FACTOR_BOUNDS: tuple[float, float] = (0.5, 3.0)
#: Candidate sharpness of the host/device combination; one per profile, the best fit.
P_CANDIDATES: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)


def combine(host_us: np.ndarray, device_us: np.ndarray, p: float) -> np.ndarray:
    """Step time when the host issues ``host_us`` of dispatches and the device runs ``device_us``.

    ``(H^p + D^p)^(1/p)``: the max of the two for large ``p``, their sum at ``p = 1``. An
    ``inf`` ``p`` is the plain max (a floor: the step is at least as long as either).
    """
    h = np.asarray(host_us, dtype=np.float64)
    d = np.asarray(device_us, dtype=np.float64)
    if not np.isfinite(p):
        return np.maximum(h, d)
    top = np.maximum(np.maximum(h, d), 1e-30)
    # Scaled by the larger term so that large p cannot overflow.
    return top * ((h / top) ** p + (d / top) ** p) ** (1.0 / p)


@dataclass(frozen=True)
class HostIssue:
    """The host-issue model of one decoder shape and phase."""

    #: host time per dispatch, µs
    us_per_dispatch: float
    #: device time in the model / op sum (cache copies, allocator, kernels between the ops)
    device_factor: float
    #: sharpness of :func:`combine` (inf: plain max)
    p: float
    #: whole-decoder rows it was fitted to (0: the profile's launch overhead, a floor)
    rows: int

    def latency_us(self, dispatches: np.ndarray, op_sum_us: np.ndarray, glue_dispatches: "np.ndarray | float" = 0.0,
                   glue_us_per_dispatch: float | None = None, outside_us: "np.ndarray | float" = 0.0) -> np.ndarray:
        """Step time of ``dispatches`` over ``op_sum_us`` of kernels (``outside_us`` of them ops no
        whole-decoder row holds: the LM head's, quantized GEMMs'); the ``glue_dispatches`` among them cost ``glue_us_per_dispatch`` each where the
        profile measured it (the rows the fit saw have no loop glue), else the fitted cost."""
        per_glue = self.us_per_dispatch if glue_us_per_dispatch is None else glue_us_per_dispatch
        host = self.us_per_dispatch * (dispatches - glue_dispatches) + per_glue * glue_dispatches
        # The fit never saw an LM head or a quantized GEMM (whole-decoder rows have none): unscaled.
        return combine(host, self.device_factor * (op_sum_us - outside_us) + outside_us, self.p)


def _fit_one(rows: list[DecoderRow], p: float) -> tuple[HostIssue, float]:
    """(u, f) by least squares in log time at fixed ``p``; the fit and its squared residual."""
    from scipy.optimize import least_squares

    n = np.array([r.dispatches for r in rows])
    d = np.array([r.op_sum_us for r in rows])
    m = np.array([r.measured_us for r in rows])
    lo = np.log([HOST_US_BOUNDS[0], DEVICE_FACTOR_BOUNDS[0]])
    hi = np.log([HOST_US_BOUNDS[1], DEVICE_FACTOR_BOUNDS[1]])
    x0 = np.clip(np.log([float(np.min(m / n)), 1.0]), lo, hi)

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log(combine(np.exp(x[0]) * n, np.exp(x[1]) * d, p) / m)

    res = least_squares(residual, x0, bounds=(lo, hi))
    u, f = np.exp(res.x)
    return HostIssue(float(u), float(f), p, len(rows)), float(np.sum(res.fun ** 2))


def fit_host_issue(rows: dict[tuple, list[DecoderRow]]) -> dict[tuple, HostIssue]:
    """The host-issue model of every measured decoder (``(kv_cache, dims)`` keys) and phase,
    keyed ``(kv_cache, dims, phase)``.

    Per decoder and phase, ``u`` and ``f`` are fitted by least squares in log time. How sharply
    host and device time combine is a property of the machine: one ``p`` of
    :data:`P_CANDIDATES` for the whole profile, the one with the least total residual.
    Deterministic (fixed start, scipy's trust-region reflective solver).
    """
    groups = {(kv, dims, phase): [r for r in rs if r.phase == phase]
              for (kv, dims), rs in rows.items() for phase in ("prefill", "decode")}
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    best: tuple[float, dict[tuple, HostIssue]] | None = None
    for p in P_CANDIDATES:
        fits = {k: _fit_one(rs, p) for k, rs in groups.items()}
        sse = sum(r for _, r in fits.values())
        if best is None or sse < best[0]:
            best = (sse, {k: f for k, (f, _) in fits.items()})
    return best[1] if best else {}
