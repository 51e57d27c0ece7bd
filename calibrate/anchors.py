"""Anchors: a few of the grid's own points, re-timed throughout a calibration to follow the machine.

A shared machine's speed wanders: a noisy neighbour, a thermal limit, a slow minute. A row
measured in a slow window is slow for the machine, not for the op, and a profile that keeps it
carries the window into every prediction. So a run re-times a fixed set of anchor points (a GEMM,
a memory-bound op and a decode attention of middling size) at its start and then every
:data:`CHECK_EVERY_S` seconds. Each check gives the machine's state: the median over the anchors
of their time now ÷ their time at the run's first check. The run's reference is the median state
over its checks; a check more than :data:`DISTURBED` away from it is disturbed, and every row
measured next to a disturbed check is measured again at the end, while the machine is back at its
reference (:meth:`Anchors.disturbed`). The checks' spread is the profile's record of how noisy and
how drifting the machine was (:meth:`Anchors.summary`, metadata ``machine_noise``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from pis.calibrate.point import Point
from pis.profiles.schema import STATUS_OK, op_bytes, op_flops

#: Op kinds whose grid points serve as anchors: compute, memory and attention behave apart.
ANCHOR_OPS: tuple[str, ...] = ("gemm", "rmsnorm", "attn_decode")
#: Seconds between two checks of the anchors.
CHECK_EVERY_S = 20.0
#: A check whose state is further than this from the run's reference is disturbed.
DISTURBED = 0.10
#: The machine is too noisy for pis's accuracy goals when checks differ by more than this from
#: one to the next (median), or drift over more than :data:`DRIFT_BOUND` of the reference.
NOISE_BOUND, DRIFT_BOUND = 0.03, 0.15
#: Fewer checks than this (a run of a minute or less) give no verdict on the machine's noise.
MIN_CHECKS = 3


def anchor_points(points: Sequence[Point], dtype: str) -> list[Point]:
    """One point of each :data:`ANCHOR_OPS` kind: the median of that op's points by work (FLOPs
    and bytes), so an anchor takes milliseconds, not microseconds or seconds."""
    out = []
    for op in ANCHOR_OPS:
        pts = [p for p in points if p.op == op]
        if pts:
            work = [float(op_flops(op, p.shape_dict)) + float(op_bytes(op, p.shape_dict, dtype)) for p in pts]
            out.append(pts[int(np.argsort(work, kind="stable")[len(pts) // 2])])
    return out


@dataclass
class Anchors:
    """The anchor checks of one calibration run (and of the runs of the same file before it)."""

    points: list[Point]
    measure: Callable[[Point], dict[str, Any]]
    #: the first check's time per anchor (µs), the basis of every state; kept in the file
    basis: dict[str, float] = field(default_factory=dict)
    #: (segment, seconds into the segment, state) of every check
    checks: list[tuple[int, float, float]] = field(default_factory=list)
    segment: int = 0
    start: float = field(default_factory=time.monotonic)
    #: when each row of this segment was measured (seconds into it), by row key
    measured_at: dict[tuple, float] = field(default_factory=dict)

    @classmethod
    def resume(cls, points: list[Point], measure: Callable[[Point], dict[str, Any]],
               kept: dict[str, Any] | None) -> "Anchors":
        """Anchors continuing the checks a file kept (``machine_noise`` metadata), as a new segment."""
        kept = kept or {}
        checks = [tuple(c) for c in kept.get("checks", [])]
        segment = 1 + max((int(c[0]) for c in checks), default=-1)
        return cls(points, measure, dict(kept.get("basis", {})), checks, segment)

    def now(self) -> float:
        return time.monotonic() - self.start

    def due(self) -> bool:
        """Whether a check is due (none yet in this segment, or the last one is old)."""
        mine = [t for s, t, _ in self.checks if s == self.segment]
        return not mine or self.now() - mine[-1] >= CHECK_EVERY_S

    def check(self) -> float | None:
        """Re-time the anchors; record and return the machine's state (None: no anchor timed)."""
        ratios = []
        for p in self.points:
            row = self.measure(p)
            if row.get("status") != STATUS_OK:
                continue
            key = _name(p)
            self.basis.setdefault(key, float(row["median_us"]))
            ratios.append(float(row["median_us"]) / self.basis[key])
        if not ratios:
            return None
        state = float(np.median(ratios))
        self.checks.append((self.segment, round(self.now(), 3), state))
        return state

    def mark(self, key: tuple) -> None:
        """Note that the row ``key`` was measured now."""
        self.measured_at[key] = self.now()

    def reference(self) -> float:
        """The machine's usual state over every check: their median."""
        states = [s for _, _, s in self.checks]
        return float(np.median(states)) if states else 1.0

    def disturbed_checks(self) -> list[tuple[int, float, float]]:
        """Checks further than :data:`DISTURBED` from the reference."""
        ref = self.reference()
        return [c for c in self.checks if abs(c[2] / ref - 1.0) > DISTURBED]

    def disturbed(self) -> list[tuple]:
        """Keys of this segment's rows measured next to a disturbed check (between it and the
        checks before and after it)."""
        mine = sorted((t, s) for seg, t, s in self.checks if seg == self.segment)
        if not mine:
            return []
        ref = self.reference()
        times = np.array([t for t, _ in mine])
        bad = np.array([abs(s / ref - 1.0) > DISTURBED for _, s in mine])
        out = []
        for key, t in self.measured_at.items():
            i = int(np.searchsorted(times, t))  # the check after the row (len: none after it)
            if (i < len(bad) and bad[i]) or (i > 0 and bad[i - 1]):
                out.append(key)
        return out

    def calm(self) -> bool:
        """Whether the latest check sits within :data:`DISTURBED` of the reference."""
        return bool(self.checks) and abs(self.checks[-1][2] / self.reference() - 1.0) <= DISTURBED

    def summary(self, remeasured: int = 0, noisy_rows: int = 0) -> dict[str, Any]:
        """What the profile keeps (``machine_noise``): the checks and their basis, and the noise
        (median change of state from one check to the next, %) and drift (the range the states
        keep to, their 5th to 95th percentile, over the reference, %: a check caught in a stall
        of a second says nothing of the run) they show."""
        states = np.array([s for _, _, s in self.checks])
        ref = self.reference()
        steps = np.abs(np.diff(states) / states[:-1]) if len(states) > 1 else np.zeros(0)
        spread = float(np.percentile(states, 95) - np.percentile(states, 5)) if len(states) else 0.0
        return {
            "anchors": [_name(p) for p in self.points], "basis": self.basis,
            "checks": [list(c) for c in self.checks],
            "noise_pct": round(100.0 * float(np.median(steps)), 2) if len(steps) else None,
            "drift_pct": round(100.0 * spread / ref, 2) if len(states) else None,
            "disturbed_checks": len(self.disturbed_checks()), "remeasured_rows": remeasured,
            "noisy_decoder_rows": noisy_rows,
        }


def too_noisy(summary: dict[str, Any]) -> str | None:
    """One line of warning when the machine was too noisy for pis's accuracy goals, else None."""
    noise, drift = summary.get("noise_pct"), summary.get("drift_pct")
    if len(summary.get("checks", [])) < MIN_CHECKS or noise is None or drift is None:
        return None
    if noise <= 100 * NOISE_BOUND and drift <= 100 * DRIFT_BOUND:
        return None
    return (f"warning: this machine's speed wandered during calibration (anchors moved {noise:.1f} % from "
            f"check to check, {drift:.1f} % over the run): predictions from this profile cannot be held to "
            f"pis's CPU accuracy (8 % median, 15 % max error) here; calibrate on a quieter machine")


def _name(p: Point) -> str:
    return p.op + "(" + ",".join(f"{c}={v}" for c, v in p.shape) + ")"
