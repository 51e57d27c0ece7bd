"""Pruned models: the options that define one, and the dimensions a sparsity leaves.

One definition for every stage: the simulator's op graphs, calibration's ``--model`` shapes and
the executors that build real pruned models all call these helpers, so the model that is
measured is the model that is predicted. Every helper is vectorized over the sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pis.errors import PisError
from pis.models import ModelSpec

KV_CACHES = ("concat", "preallocated")
#: Families that route tokens at run time (pis's reference decoder executes them; every
#: other family is a statically pruned Hugging Face model).
ROUTED_FAMILIES: tuple[str, ...] = ("dynamic-depth", "sparse-attention", "dynamic-width")


@dataclass(frozen=True)
class PruneOptions:
    """Knobs shared by the families (CLI: --granularity, --align, --layer-sparsity)."""

    #: static-depth: remove whole layers ("layer") or attention/MLP sublayers ("sublayer")
    granularity: str = "layer"
    #: kept FFN channels, hidden size and low-rank ranks round to a multiple of this
    align: int = 64
    #: one sparsity per decoder layer (non-uniform pruning), or None for uniform ``s``
    layer_sparsity: tuple[float, ...] | None = None
    #: dynamic-depth router bottleneck rank
    router_rank: int = 16
    #: sparse-attention KV block size
    block: int = 64
    #: dynamic-width FFN channel groups
    ffn_groups: int = 8
    #: decode KV cache: "concat" copies each layer's cache to append a token (Hugging Face
    #: DynamicCache, what `generate` uses by default); "preallocated" writes in place (static
    #: or paged caches of serving engines), which costs next to nothing
    kv_cache: str = "concat"

    def __post_init__(self) -> None:
        if self.granularity not in ("layer", "sublayer"):
            raise PisError(f"granularity must be 'layer' or 'sublayer', got {self.granularity!r}")
        if self.kv_cache not in KV_CACHES:
            raise PisError(f"kv_cache must be one of {', '.join(KV_CACHES)}, got {self.kv_cache!r}")
        for f in ("align", "router_rank", "block", "ffn_groups"):
            if int(getattr(self, f)) < 1:
                raise PisError(f"{f} must be a positive integer")


def round_half_up(x: "np.ndarray | float") -> np.ndarray:
    """Round half up (numpy rounds half to even, which makes 0.5·L off by one for odd L)."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5 + 1e-9).astype(np.int64)


def ceil_int(x: "np.ndarray | float") -> np.ndarray:
    """Ceiling with a tolerance for float noise (``ceil(0.5 · 6)`` is 3, not 4)."""
    return np.ceil(np.asarray(x, dtype=np.float64) - 1e-9).astype(np.int64)


def layers_removed(n_layers: "int | np.ndarray", s: "float | np.ndarray") -> np.ndarray:
    """Static depth: layers removed out of ``n_layers`` at sparsity ``s`` (round half up)."""
    return round_half_up(np.asarray(s) * n_layers)


def layers_kept(spec: ModelSpec, s: "float | np.ndarray") -> np.ndarray:
    """Static depth: decoder layers that still run."""
    return spec.layers - layers_removed(spec.layers, s)


def pruned_heads(spec: ModelSpec, s: "float | np.ndarray") -> np.ndarray:
    """Static width: query heads kept, a multiple of the KV-head count (at least one group)."""
    g = spec.kv_heads
    return np.maximum(g, round_half_up((1.0 - np.asarray(s)) * spec.heads / g) * g)


def _aligned(width: int, s: "float | np.ndarray", align: int) -> np.ndarray:
    return np.minimum(width, np.maximum(align, round_half_up((1.0 - np.asarray(s)) * width / align) * align))


def pruned_ffn(spec: ModelSpec, s: "float | np.ndarray", align: int = 64) -> np.ndarray:
    """Static width: FFN channels kept, a multiple of ``align``."""
    return np.where(np.asarray(s) > 0, _aligned(spec.ffn, s, align), spec.ffn)


def pruned_hidden(spec: ModelSpec, s: "float | np.ndarray", align: int = 64) -> np.ndarray:
    """Static width, cross-layer: hidden size kept, a multiple of ``align``."""
    return np.where(np.asarray(s) > 0, _aligned(spec.hidden, s, align), spec.hidden)


def lowrank_rank(n: "int | np.ndarray", k: "int | np.ndarray", s: "float | np.ndarray",
                 align: int = 64) -> np.ndarray:
    """Rank keeping a fraction (1−s) of the N×K parameters in two factors, floored to ``align``."""
    n, k = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    r = np.floor((1.0 - np.asarray(s)) * n * k / (n + k) / align + 1e-9) * align
    return np.maximum(align, r).astype(np.int64)


def calibration_shapes(spec: ModelSpec, sparsities: Sequence[float] = tuple(np.arange(10) / 10),
                       align: int = 64) -> list[tuple[int, int]]:
    """Every GEMM weight shape (N, K) the families produce on ``spec`` at ``sparsities``.

    ``pis-calibrate --model`` measures these exactly, so width-pruned and low-rank GEMMs with
    odd N/K hit the profile instead of being interpolated.
    """
    shapes: set[tuple[int, int]] = set()
    d, f, hd, g = spec.hidden, spec.ffn, spec.head_dim, spec.kv_heads
    for s in sparsities:
        h = int(pruned_heads(spec, s)) if s > 0 else spec.heads
        fp = int(pruned_ffn(spec, s, align))
        dp = int(pruned_hidden(spec, s, align))
        for dd in {d, dp}:
            shapes |= {(h * hd, dd), (spec.heads * hd, dd), (g * hd, dd), (dd, h * hd),
                       (dd, spec.heads * hd), (fp, dd), (f, dd), (dd, fp), (dd, f), (spec.vocab, dd),
                       (dd, dd)}
        if s > 0:
            for n, k in [(spec.heads * hd, d), (g * hd, d), (d, spec.heads * hd), (f, d), (d, f)]:
                r = int(lowrank_rank(n, k, s, align))
                shapes |= {(r, k), (n, r)}
    shapes |= {(16, d), (1, 16), (g + 8, d), (spec.group_size * hd, d), (d, spec.group_size * hd),
               (max(1, f // 8), d), (d, max(1, f // 8))}
    return sorted(shapes)
