"""The in-model factor law (CPU): how much slower a decoder's ops run in the model than alone.

Calibration times every op alone, in a loop. In a model the same ops run slower: their outputs
land in memory that is not in cache (on a CPU often not even mapped: glibc returns freed
activations to the kernel, and the next forward faults them back in), and the framework adds its
own glue (Hugging Face's unfused RMSNorm, the attention output's ``transpose().contiguous()``,
``DynamicCache`` concatenation). For each whole-decoder row the factor is measured ÷ op sum; a
least-squares log-linear law through the factors (in tokens for prefill, in batch and context
for decode), clamped to the measured box, gives the factor at any design point.

One factor on the whole op sum assumes every op runs equally much slower. Inside Hugging Face's
decoder the GEMMs run near their profiled speed while the norms, rotary and cache glue run
further from theirs, so a family that shrinks the GEMMs and keeps the rest would keep too little
of the in-model excess. Where a profile times the decoder at two FFN widths, the law becomes
``f(x) · (GEMMs + ρ · other ops)`` with one ρ per decoder and phase.

The routed families' executors take their own law, from their own decoder's rows at two
sparsities (plus a linear term in s).
"""

from __future__ import annotations


import numpy as np

from pis.models import ModelSpec
from pis.simulator.inmodel.rows import DIMS, GRAPH_EXECUTOR, OP_FOR_KV_CACHE, DecoderRow
from pis.simulator.points import Points


#: The dense executors (eager cache disciplines, graph execution); every other executor of a row
#: is a routed family.
DENSE_EXECUTORS: frozenset[str] = frozenset(OP_FOR_KV_CACHE) | {GRAPH_EXECUTOR}
#: Bounds of ρ, the other ops' factor over the GEMMs'.
OTHER_RATIO_BOUNDS: tuple[float, float] = (0.5, 5.0)


def scaled(f_gemm: np.ndarray, f_other: np.ndarray, op_sum: "np.ndarray | float", gemm: "np.ndarray | float",
           outside: "np.ndarray | float" = 0.0) -> np.ndarray:
    """The factors applied to an op sum: ``f_gemm`` on its GEMMs, ``f_other`` on the rest, the
    GEMMs no whole-decoder row holds (``outside``: the LM head, quantized GEMMs; part of both
    sums) unscaled; exactly the one-factor law where the two are equal."""
    return f_other * (op_sum - outside) + (f_gemm - f_other) * (gemm - outside) + outside


def _features(axes: np.ndarray, routed: bool) -> np.ndarray:
    """Log of the query axes (columns); a routed law's last axis, the sparsity, stays linear."""
    logged = axes.shape[1] - 1 if routed else axes.shape[1]
    return np.column_stack([np.log(axes[:, :logged]), axes[:, logged:]])


def _design(phase: str, rows: list[DecoderRow], routed: bool) -> tuple[np.ndarray, tuple]:
    """Least-squares design of a log-linear law over ``rows`` (intercept, then the axes that
    vary) and its box ``(used, lo, hi)`` for clamping queries."""
    axes = [[r.batch * r.length] if phase == "prefill" else [r.batch, r.length] for r in rows]
    if routed:
        axes = [a + [r.sparsity] for a, r in zip(axes, rows)]
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


class FactorLaws:
    """The factor laws of one profile's decoder rows, per decoder ``(executor, dims)`` and phase;
    each is fitted on first use."""

    def __init__(self, rows: dict[tuple, list[DecoderRow]]) -> None:
        self.rows = rows
        #: (executor, dims) -> the same decoder timed with a narrower FFN: the pair separates the
        #: GEMMs' in-model factor from the other ops' (:meth:`split_fit`)
        self.narrow: dict[tuple, tuple[int, ...]] = {}
        for ex, dims in rows:
            narrower = [d for e, d in rows if e == ex and d[1] < dims[1] and _same_but_ffn(d, dims)]
            if narrower:
                self.narrow[(ex, dims)] = min(narrower, key=lambda d: d[1])
        self._narrowed = {(ex, d) for (ex, _), d in self.narrow.items()}
        self._fits: dict[tuple, tuple] = {}

    def nearest_dims(self, spec: ModelSpec, executor: str = "concat") -> tuple[int, ...] | None:
        """The measured decoder shape closest to ``spec`` (log distance of hidden and FFN) among
        ``executor``'s rows (a dense cache discipline or a routed family)."""
        # A narrow-FFN companion informs its wide decoder's law; it is never a law of its own.
        measured = [dims for ex, dims in self.rows if ex == executor and (ex, dims) not in self._narrowed]
        if not measured:
            return None
        want = np.log([spec.hidden, spec.ffn])
        return min(measured, key=lambda d: float(np.abs(np.log(d[:2]) - want).sum()))

    def phase_rows(self, key: tuple, phase: str) -> list[DecoderRow]:
        """The ``phase`` rows of decoder ``key`` = (executor, dims) that the law fits: those
        without fresh allocations over the mmap threshold (the first-touch fit takes those)."""
        return [r for r in self.rows.get(key, []) if r.phase == phase and not r.fresh_bytes]

    def narrow_rows(self, key: tuple, phase: str) -> list[DecoderRow]:
        """The ``phase`` rows of the narrow-FFN companion of decoder ``key`` (none without one)."""
        return self.phase_rows((key[0], self.narrow.get(key)), phase)

    def factors(self, spec: ModelSpec, pts: Points, executor: str,
                routed: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """(GEMM factor, other ops' factor) of ``executor``'s law at ``pts`` (None: no rows)."""
        dims = self.nearest_dims(spec, executor)
        key = (executor, dims)
        rows = self.phase_rows(key, pts.phase) if dims else []
        if not rows:
            return None
        query = [pts.batch * pts.seq_len] if pts.phase == "prefill" else [pts.batch, pts.context]
        if routed:
            query.append(pts.sparsity)
            f = self._fit(key + (pts.phase,), rows, query, routed)
            return f, f
        if not self.narrow_rows(key, pts.phase):
            f = self._fit(key + (pts.phase,), rows, query)
            return f, f
        # The weighted op sum's law: the GEMMs' factor is f, the other ops' ρ f.
        (ratio, coef), box = self.split_fit(key, pts.phase)
        f = np.exp(_query_design(query, box, routed=False) @ coef)
        return f, ratio * f

    def _fit(self, key: tuple, rows: list[DecoderRow], query: list[np.ndarray], routed: bool = False) -> np.ndarray:
        """A least-squares log-linear law through the measured factors, evaluated at ``query``.

        Prefill: log f = a + b·log(tokens); decode: log f = a + b·log(batch) + c·log(context);
        a routed family's rows add + d·s (a query whose last axis is the sparsity). A fit
        smooths single measurements of a whole decoder, which scatter by several percent on a
        busy machine, where interpolating through every row would carry each one's noise. Axes
        with one measured value drop out; queries are clamped to the measured box.
        """
        if key not in self._fits:
            design, box = _design(key[-1], rows, routed)
            coef, *_ = np.linalg.lstsq(design, np.log([r.factor for r in rows]), rcond=None)
            self._fits[key] = (coef, box)
        coef, box = self._fits[key]
        return np.exp(_query_design(query, box, routed) @ coef)

    def split_fit(self, key: tuple, phase: str) -> tuple[tuple[float, np.ndarray], tuple]:
        """``((ρ, law coefficients), box)`` of the law ``f(x) · (GEMM µs + ρ · other µs)``, fitted
        once per decoder ``key`` and ``phase`` to its rows at both FFN widths: least squares in
        log time (scipy's trust-region solver from the one-factor fit and ρ = 1: deterministic),
        ρ within :data:`OTHER_RATIO_BOUNDS`.

        One ρ per decoder and phase, not a law of its own for each part: the rows' GEMM shares
        differ enough between the widths to weigh the two parts against each other, not to fit
        two slopes."""
        cached = key + (phase, "split")  # beside the one-factor law of the same decoder and phase
        if cached not in self._fits:
            from scipy.optimize import least_squares

            rows = self.phase_rows(key, phase) + self.narrow_rows(key, phase)
            design, box = _design(phase, rows, routed=False)
            gemm = np.array([r.gemm_us for r in rows])
            other = np.array([r.op_sum_us for r in rows]) - gemm
            target = np.array([r.target_us for r in rows])
            one, *_ = np.linalg.lstsq(design, np.log(target / (gemm + other)), rcond=None)

            def residual(x: np.ndarray) -> np.ndarray:
                return design @ x[1:] + np.log((gemm + np.exp(x[0]) * other) / target)

            lo, hi = np.log(OTHER_RATIO_BOUNDS)
            free = [-np.inf] * len(one), [np.inf] * len(one)
            fit = least_squares(residual, np.concatenate([[0.0], one]), bounds=([lo, *free[0]], [hi, *free[1]]))
            self._fits[cached] = ((float(np.exp(fit.x[0])), fit.x[1:]), box)
        return self._fits[cached]

    def fit_all(self) -> dict[tuple, tuple]:
        """Fit every law the rows support (each decoder and phase) and return them all, keyed as
        they are kept (to store them: :meth:`from_fits` restores the laws without fitting)."""
        for ex, dims in self.rows:
            if (ex, dims) in self._narrowed:
                continue
            for phase in ("prefill", "decode"):
                rows = self.phase_rows((ex, dims), phase)
                if not rows:
                    continue
                query = [np.ones(1)] * (1 if phase == "prefill" else 2)
                if ex not in DENSE_EXECUTORS:
                    self._fit((ex, dims, phase), rows, query + [np.zeros(1)], routed=True)
                elif self.narrow_rows((ex, dims), phase):
                    self.split_fit((ex, dims), phase)
                else:
                    self._fit((ex, dims, phase), rows, query)
        return dict(self._fits)

    @classmethod
    def from_fits(cls, rows: dict[tuple, list[DecoderRow]], fits: dict[tuple, tuple]) -> "FactorLaws":
        """The laws of ``rows`` with the fits :meth:`fit_all` returned for them."""
        laws = cls(rows)
        laws._fits.update(fits)
        return laws

    def splits(self) -> list[dict]:
        """Per decoder with a narrow-FFN companion and phase: ρ (the other ops' factor over the
        GEMMs') and the rows it was fitted to (for ``pis-profile info``)."""
        out = []
        for key, narrow_dims in sorted(self.narrow.items()):
            for phase in ("prefill", "decode"):
                narrow = self.narrow_rows(key, phase)
                if narrow:
                    (ratio, _), _ = self.split_fit(key, phase)
                    out.append(dict(executor=key[0], **dict(zip(DIMS, key[1])), narrow_ffn=narrow_dims[1],
                                    phase=phase, other_over_gemm=ratio,
                                    rows=len(self.phase_rows(key, phase)) + len(narrow)))
        return out
