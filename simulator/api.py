"""``Simulator``: one profile's op estimator and in-model correction, and the public way to query them.

    >>> import pis
    >>> sim = pis.Simulator("h100")
    >>> df = sim.predict(method=["dense", "static-depth"], sparsity=[0, 0.5], phase="decode", batch=[1, 16])

Every argument of :meth:`Simulator.predict` takes a scalar or a list; lists make a Cartesian
sweep, one row per design point (the columns of ``pis-simulate --format json``). The CLIs and
the notebook use this class; everything under it is internal.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from pis.errors import PisError
from pis.models import ModelSpec, load_model
from pis.pruned import PruneOptions
from pis.profiles.shipped import resolve_profile
from pis.profiles.store import Profile, load_profile
from pis.simulator.cache import DerivedCache
from pis.simulator.estimator import Estimator
from pis.simulator.points import PHASES
from pis.simulator.pruning import FAMILIES, check_methods

if TYPE_CHECKING:
    import pandas as pd

    from pis.simulator.inmodel.correction import InModelCorrection
    from pis.simulator.sweep import Columns


def _listed(value: object) -> list:
    if isinstance(value, (str, bytes, ModelSpec)) or not isinstance(value, Iterable):
        return [value]
    return list(value)


class Simulator:
    """Predicts how fast pruned decoders run on the device a profile describes.

    Args:
        profile: a profile file, the name of a shipped profile (``"h100"``, ``"cpu-2core"``), a
            loaded :class:`~pis.profiles.store.Profile`, or None for the embedded default.
        allow_roofline: price ops the profile lacks (2:4 on a CPU profile, say) by roofline
            instead of failing; such results are flagged ``extrapolated``.
    """

    def __init__(self, profile: "str | os.PathLike[str] | Profile | None" = None, *,
                 allow_roofline: bool = False) -> None:
        self._sha256: str | None = None
        cache = None
        if isinstance(profile, Profile):
            self.path: Path | None = None
            loaded = profile
        else:
            self.path = resolve_profile(None if profile is None else str(profile))
            loaded = load_profile(self.path)
            cache = DerivedCache.for_profile(self.profile_sha256)
        self.profile = loaded
        #: where meshes and fits derived from the profile are kept between processes (files only)
        self.cache = cache
        self.estimator = Estimator(loaded, allow_roofline=allow_roofline, cache=cache)
        self._correction: "InModelCorrection | None" = None

    @property
    def profile_sha256(self) -> str:
        """sha256 of the profile file (of its Parquet encoding for a profile built in memory)."""
        import hashlib

        if self._sha256 is None:
            if self.path is not None:
                self._sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
            else:
                import io

                from pis.profiles.store import write_profile_to

                buf = io.BytesIO()
                write_profile_to(self.profile, buf)
                self._sha256 = hashlib.sha256(buf.getvalue()).hexdigest()
        return self._sha256

    @property
    def correction(self) -> "InModelCorrection":
        """The profile's in-model correction (:mod:`pis.simulator.inmodel`), fitted on first use."""
        if self._correction is None:
            from pis.simulator.cache import decode, encode
            from pis.simulator.inmodel.correction import InModelCorrection

            kept = self.cache.load_json("inmodel") if self.cache is not None else None
            self._correction = InModelCorrection(self.estimator, decode(kept) if kept is not None else None)
            if self.cache is not None and kept is None:
                self.cache.save_json("inmodel", encode(self._correction.state()))
        return self._correction

    @property
    def device_kind(self) -> str:
        """``cuda`` or ``cpu``: the kind of device the profile describes."""
        return "cuda" if self.estimator.is_cuda else self.estimator.device_kind

    def resolve(self, options: PruneOptions | None = None) -> PruneOptions:
        """``options`` with what they leave open set to this profile's defaults (graph execution
        and the study's op graphs on a GPU, eager execution and pis's on a CPU)."""
        return (options or PruneOptions()).resolved(self.device_kind)

    def families(self) -> list[str]:
        """Every family this profile can answer (2:4 needs ``gemm_2to4`` rows, or roofline)."""
        return [m for m in FAMILIES if m != "semi-structured" or self.estimator.allow_roofline
                or "gemm_2to4" in self.estimator.ops()]

    def columns(self, models: Sequence[ModelSpec], methods: Sequence[str], sparsities: Sequence[float],
                phases: Sequence[str], batches: Sequence[int], seq_lens: Sequence[int], contexts: Sequence[int],
                opts: PruneOptions | None = None, breakdown: bool = False, in_model: bool = True,
                jobs: int = 1) -> "Columns":
        """A sweep as columns of numpy arrays (:func:`pis.simulator.sweep.sweep_columns`), optionally
        split over joblib workers; the row order never depends on ``jobs``."""
        from pis.simulator.sweep import concat_columns, sweep_columns

        if jobs == 1:
            return sweep_columns(self, models, methods, sparsities, phases, batches, seq_lens, contexts, opts,
                                 breakdown, in_model)
        from joblib import Parallel, delayed

        tasks = [(m, p, meth) for m in models for p in phases for meth in methods]
        parts = Parallel(n_jobs=jobs)(
            delayed(sweep_columns)(self, [m], [meth], sparsities, [p], batches, seq_lens, contexts, opts,
                                   breakdown, in_model)
            for m, p, meth in tasks)
        return concat_columns(parts)

    def predict(self, model: "str | ModelSpec | Iterable" = "llama-3.1-8b", method: "str | Iterable[str]" = "dense",
                sparsity: "float | Iterable[float]" = 0.0, phase: "str | Iterable[str]" = "prefill",
                batch: "int | Iterable[int]" = 1, seq_len: "int | Iterable[int]" = 1024,
                context: "int | Iterable[int]" = 4096, *, options: PruneOptions | None = None,
                in_model: bool = True, breakdown: bool = False, jobs: int = 1) -> "pd.DataFrame":
        """Predicted latency, speedup, theoretical bound and estimator paths of every design point.

        ``model`` is a preset name, a Hugging Face ``config.json`` path or a :class:`ModelSpec`;
        ``method`` a family name or ``"all"``. Every argument may be a list (Cartesian sweep).
        ``options`` sets what defines the pruned model beyond family and sparsity (alignment,
        granularity, KV cache); ``in_model=False`` returns plain op sums.
        """
        from pis.simulator.sweep import to_frame

        models = [m if isinstance(m, ModelSpec) else load_model(str(m)) for m in _listed(model)]
        methods = self.families() if method == "all" else [str(m) for m in _listed(method)]
        check_methods(methods)
        phases = [str(p) for p in _listed(phase)]
        bad = [p for p in phases if p not in PHASES]
        if bad:
            raise PisError(f"unknown phase {bad[0]!r}; use prefill and/or decode")
        cols = self.columns(models, methods, [float(s) for s in _listed(sparsity)], phases,
                            [int(b) for b in _listed(batch)], [int(s) for s in _listed(seq_len)],
                            [int(c) for c in _listed(context)], options, breakdown, in_model, jobs)
        return to_frame(cols)

    def design_points(self, methods: "Iterable[str] | str" = "all",
                      sparsities: Iterable[float] = tuple(i / 20 for i in range(19)), *,
                      model: "str | ModelSpec | Iterable" = "llama-3.1-8b", phase: str = "prefill",
                      batch: "int | Iterable[int]" = 1, seq_len: "int | Iterable[int]" = 1024,
                      context: "int | Iterable[int]" = 4096, options: PruneOptions | None = None,
                      in_model: bool = True, breakdown: bool = False, jobs: int = 1) -> "pd.DataFrame":
        """Dense and every family of ``methods``, each at the ``sparsities`` it can realize (2:4
        stops at 0.5), as :meth:`predict` rows sorted by scenario, family and sparsity: the input
        of a Pareto analysis (:mod:`pis.simulator.pareto`). Dense has one row per scenario."""
        import pandas as pd

        from pis.simulator.pareto import scenario_columns
        from pis.simulator.sweep import concat_columns, to_frame

        names = self.families() if methods == "all" else [str(m) for m in _listed(methods)]
        check_methods(names)
        names = ["dense"] + [m for m in names if m != "dense"]
        groups: dict[tuple[float, ...], list[str]] = {}
        for m in names:
            allowed = tuple(float(x) for x in sparsities if FAMILIES[m].allows(float(x)))
            allowed = allowed or ((0.0,) if m == "dense" else ())
            if allowed:
                groups.setdefault(allowed, []).append(m)
        models = [m if isinstance(m, ModelSpec) else load_model(str(m)) for m in _listed(model)]
        if phase not in PHASES:
            raise PisError(f"unknown phase {phase!r}; use prefill or decode")
        parts = [self.columns(models, group, list(allowed), [phase], [int(b) for b in _listed(batch)],
                              [int(x) for x in _listed(seq_len)], [int(c) for c in _listed(context)], options,
                              breakdown, in_model, jobs)
                 for allowed, group in groups.items()]
        df = to_frame(concat_columns(parts))
        order = {m: i for i, m in enumerate(names)}
        df = df.sort_values(scenario_columns(df) + ["method", "sparsity"],
                            key=lambda c: c.map(order) if c.name == "method" else c, kind="mergesort")
        return pd.DataFrame(df).reset_index(drop=True)
