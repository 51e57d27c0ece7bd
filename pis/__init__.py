"""PruningInferSim: predict how fast a pruned LLM really runs, from measured latency profiles.

The public API (imported on first use, so ``import pis`` stays cheap)::

    import pis
    sim = pis.Simulator("h100")                      # a shipped profile, a file, or the default
    df = sim.predict(method="static-depth", sparsity=[0.25, 0.5], phase="decode", batch=[1, 16])
    points = pis.load_quality().annotate(sim.design_points(phase="prefill", batch=8))
    front, found = pis.frontier(points), pis.bands(points)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Public name -> the module that owns it.
_PUBLIC: dict[str, str] = {
    "Simulator": "pis.simulator.api",
    "ModelSpec": "pis.models", "load_model": "pis.models", "PRESETS": "pis.models",
    "PruneOptions": "pis.pruned",
    "FAMILIES": "pis.simulator.pruning",
    "Profile": "pis.profiles.store", "load_profile": "pis.profiles.store",
    "load_quality": "pis.simulator.quality",
    "frontier": "pis.simulator.pareto", "bands": "pis.simulator.pareto",
    "compare_with_study": "pis.simulator.pareto", "efficiency": "pis.simulator.pareto",
    "STUDY_BANDS_PREFILL": "pis.simulator.pareto",
    "pareto_figure": "pis.simulator.plots", "breakdown_figure": "pis.simulator.plots",
    "speedup_figure": "pis.simulator.plots",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("pruninginfersim")
        except PackageNotFoundError:  # a source tree without install
            return "0.0.0+unknown"
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'pis' has no attribute {name!r}")
