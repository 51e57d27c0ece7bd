"""Machine drift: is this device as fast now as when its profile was measured?

A shared machine's speed moves: the same validation suite, on the same profile and code, can
measure several percent slower some minutes after a first run. A prediction error computed
across such a drift mixes the simulator's error with the machine's. So ``pis-validate``
re-measures a few of the profile's own points, with calibration's bench and timer, before
every round; the median ratio ``now / then`` is the machine's drift, reported next to the
errors (and used for the ``drift_adjusted_error_pct`` column, a diagnostic: the headline
error is never adjusted).

What it resolves: gross slowdowns, such as another process holding one of the cores. Drifts
of a few percent it does not: at that scale the probe's reading and the suite's move are
uncorrelated (``benchmarks/experiments/drift_tracking.py``), although the probe repeats
closely back to back. Single ops and whole models wander apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pis.allocator import FRESH_ALLOC_THRESHOLD
from pis.calibrate import ops
from pis.calibrate.grid import GRID_NAMES, timing_config
from pis.calibrate.point import point
from pis.calibrate.runner import measure_point
from pis.calibrate.timing import make_timer
from pis.profiles.schema import DTYPE_BYTES, OPS, STATUS_OK
from pis.profiles.store import Profile

#: Op kinds probed: compute- and memory-bound GEMMs, attention, and the memory-bound ops.
PROBE_OPS: tuple[str, ...] = ("gemm", "attn_decode", "attn_prefill", "rmsnorm", "silu_mul", "kv_concat")
#: Probe rows whose stored median lies in this range (µs): long enough to time well, short
#: enough that the probe costs a few seconds.
PROBE_RANGE_US: tuple[float, float] = (50.0, 5000.0)


def _output_bytes(op: str, shape: dict, itemsize: int) -> int:
    """Bytes of the tensor one call of a probe op returns (the largest it allocates)."""
    if op == "gemm":
        return shape["m"] * shape["n"] * itemsize
    return shape.get("numel", 0) * itemsize


@dataclass(frozen=True)
class Drift:
    """How much slower (positive) or faster the device runs now than in its profile."""

    #: median over the probe points of (now / then - 1), in %
    median_pct: float
    points: int
    #: per probe point: (op, shape, then µs, now µs)
    detail: tuple[tuple[str, dict, float, float], ...]

    def describe(self) -> str:
        """One line for people."""
        if not self.points:
            return "machine drift: not measured (no probe points in the profile)"
        ratios = [now / then - 1 for _, _, then, now in self.detail]
        return (f"machine drift vs the profile: {self.median_pct:+.1f} % (median of {self.points} "
                f"re-measured profile points, range {100 * min(ratios):+.0f} to {100 * max(ratios):+.0f} %)")


def probe_rows(profile: Profile, dtype: str, per_op: int = 2) -> list[tuple[str, dict, float]]:
    """(op, shape, stored µs) of up to ``per_op`` measured rows of each probe op.

    The rows are spread evenly over the op's stored medians within :data:`PROBE_RANGE_US`, so
    the choice is deterministic for a given profile. Rows whose op returns a tensor at or over
    glibc's mmap threshold are left out: whether its pages fault in depends on what the process
    freed before, not on the machine's speed, and such a row re-measured in a fresh process can
    read several times its stored time.
    """
    itemsize = DTYPE_BYTES[dtype]
    rows = profile.rows
    rows = rows[(rows["status"] == STATUS_OK) & (rows["dtype"] == dtype)
                & rows["median_us"].between(*PROBE_RANGE_US)]
    out = []
    for op in PROBE_OPS:
        sel = rows[rows["op"] == op].sort_values("median_us", kind="stable")
        cands = [({c: int(getattr(r, c)) for c in OPS[op].columns}, float(r.median_us))
                 for r in sel.itertuples(index=False)]
        cands = [(shape, us) for shape, us in cands if _output_bytes(op, shape, itemsize) < FRESH_ALLOC_THRESHOLD]
        if not cands:
            continue
        picks = np.unique(np.linspace(0, len(cands) - 1, per_op).round().astype(int))
        out += [(op, *cands[i]) for i in picks]
    return out


def measure_drift(profile: Profile, device: torch.device, dtype: str) -> Drift:
    """Re-measure the profile's probe rows on ``device`` with the timing of the profile's grid
    (a CPU timer warms the allocator first: :func:`pis.calibrate.timing.warm_allocator`)."""
    grid = str(profile.meta.get("grid_name") or "quick")
    name = grid if grid in GRID_NAMES else "quick"
    # pis-calibrate times CUDA graphs by default; the probe times ops as the profile did.
    timer = make_timer(device, timing_config(name, device.type, cuda_graphs=device.type == "cuda"))
    detail = []
    try:
        for op, shape, then in probe_rows(profile, dtype):
            row = measure_point(point(op, **shape), dtype, device, timer)
            if row.get("status") == STATUS_OK:
                detail.append((op, shape, then, float(row["median_us"])))
    finally:
        ops.clear_cache()  # the 1 GiB weight pool is not needed by the models that follow
    ratios = [now / then for _, _, then, now in detail]
    median = float((np.median(ratios) - 1.0) * 100.0) if ratios else float("nan")
    return Drift(median, len(detail), tuple(detail))
