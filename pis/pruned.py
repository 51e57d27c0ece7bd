"""Pruned models: the options that define one, and the dimensions a sparsity leaves.

One definition for every stage: the simulator's op graphs, calibration's ``--model`` shapes and
the executors that build real pruned models all call these helpers, so the model that is
measured is the model that is predicted. Every helper is vectorized over the sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from pis.errors import PisError
from pis.models import ModelSpec

KV_CACHES = ("concat", "preallocated")
#: Weight formats: "native" (the profile's activation dtype), or quantized.
WEIGHT_FORMATS: tuple[str, ...] = ("native", "fp8", "int8", "int4")
#: Names of the native weight format (unquantized weights in the activation dtype).
NATIVE_NAMES: tuple[str, ...] = ("native", "bf16", "fp16", "fp32")


def weight_format(name: str) -> str:
    """The canonical weight format of ``name`` (bf16, fp16 and fp32 name the native one)."""
    name = str(name).strip().lower()
    if name in NATIVE_NAMES:
        return "native"
    if name not in WEIGHT_FORMATS:
        raise PisError(f"--weights: {name!r} is not a weight format; use native (or bf16/fp16/fp32), "
                       "fp8, int8 or int4")
    return name
#: How a step runs: ``eager`` (PyTorch issues every op from Python: Hugging Face's ``generate``)
#: or ``graph`` (the whole step replays as one CUDA graph, fused RMSNorm and RoPE, the KV cache
#: written in place: the study's PruningInferSim, and serving engines).
EXECUTIONS = ("eager", "graph")
#: Whose op graphs the families follow: ``study`` (PruningInferSim's, arXiv 2606.09080) or
#: ``pis`` (the executors of ``pis-validate``: Hugging Face for the static families, pis's
#: reference decoder for the routed ones). ``simulator/FAMILIES.md`` sets them side by side.
OP_GRAPHS = ("study", "pis")
#: Families whose two op graphs differ, and the names of their (study, pis) variants.
VARIANT_NAMES: dict[str, tuple[str, str]] = {
    "static-depth": ("sublayers", "layers"),
    "static-width": ("kv-groups", "query-heads"),
    "static-width-hidden": ("round-up-16", "align"),
    "semi-structured": ("all-layers", "layer-fraction"),
    "low-rank": ("round-up-16", "align"),
    "dynamic-depth": ("masked", "gather"),
    "sparse-attention": ("tiles", "gather"),
}
#: Families that route tokens at run time (pis's reference decoder executes them; every
#: other family is a statically pruned Hugging Face model).
ROUTED_FAMILIES: tuple[str, ...] = ("dynamic-depth", "sparse-attention", "dynamic-width")


@dataclass(frozen=True)
class PruneOptions:
    """What defines a pruned model and how it runs, besides its family and sparsity.

    ``execution``, ``kv_cache`` and ``op_graph`` left None take the profile's defaults
    (:meth:`resolved`): graph execution with an in-place cache and the study's op graphs on a
    GPU, eager execution with Hugging Face's concatenating cache and pis's op graphs on a CPU.
    """

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
    #: or paged caches of serving engines, and every graph-captured step)
    kv_cache: str | None = None
    #: "eager" or "graph" (:data:`EXECUTIONS`)
    execution: str | None = None
    #: "study" or "pis" (:data:`OP_GRAPHS`), for every family that has both
    op_graph: str | None = None
    #: per family, the op graph that replaces ``op_graph`` for it: ``(family, variant)`` pairs,
    #: the variant "study", "pis" or one of the family's :data:`VARIANT_NAMES`
    variants: tuple[tuple[str, str], ...] = ()
    #: the decoder's weight format: "native" (the activation dtype's), "fp8", "int8" or "int4"
    weights: str = "native"
    #: int4 weights: elements per scale and zero along K
    group_size: int = 128
    #: the LM head's weights in the quantized format too (by default it keeps the activation dtype)
    quantize_head: bool = False

    def __post_init__(self) -> None:
        if self.granularity not in ("layer", "sublayer"):
            raise PisError(f"granularity must be 'layer' or 'sublayer', got {self.granularity!r}")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHES:
            raise PisError(f"kv_cache must be one of {', '.join(KV_CACHES)}, got {self.kv_cache!r}")
        if self.execution is not None and self.execution not in EXECUTIONS:
            raise PisError(f"execution must be one of {', '.join(EXECUTIONS)}, got {self.execution!r}")
        if self.op_graph is not None and self.op_graph not in OP_GRAPHS:
            raise PisError(f"op graph must be one of {', '.join(OP_GRAPHS)}, got {self.op_graph!r}")
        if self.execution == "graph" and self.kv_cache == "concat":
            raise PisError("graph execution writes the KV cache in place: --kv-cache concat runs eagerly only")
        for family, name in self.variants:
            if family not in VARIANT_NAMES:
                raise PisError(f"--variant: {family!r} has one op graph; families with two: "
                               f"{', '.join(VARIANT_NAMES)}")
            if name not in (*OP_GRAPHS, *VARIANT_NAMES[family]):
                raise PisError(f"--variant: {family} runs {' or '.join(VARIANT_NAMES[family])} "
                               f"(or: study, pis), not {name!r}")
        if self.weights not in WEIGHT_FORMATS:
            raise PisError(f"--weights: {self.weights!r} is not a weight format; use {', '.join(WEIGHT_FORMATS)}")
        for f in ("align", "router_rank", "block", "ffn_groups", "group_size"):
            if int(getattr(self, f)) < 1:
                raise PisError(f"{f} must be a positive integer")

    def resolved(self, device_kind: str) -> "PruneOptions":
        """These options with every None filled by the defaults of a ``cuda`` or ``cpu`` profile."""
        execution = self.execution or ("graph" if device_kind == "cuda" else "eager")
        if execution == "graph" and device_kind != "cuda":
            raise PisError("graph execution replays CUDA graphs: it needs a GPU profile (this one is "
                           f"a {device_kind or 'unknown'} device's); use --execution eager")
        kv = self.kv_cache or ("preallocated" if execution == "graph" else "concat")
        graph = self.op_graph or ("study" if execution == "graph" else "pis")
        return replace(self, execution=execution, kv_cache=kv, op_graph=graph)

    @property
    def graph(self) -> bool:
        """Whether the step replays as one CUDA graph (fused norm and RoPE, no per-op launch)."""
        return self.execution == "graph"

    def variant(self, family: str) -> str:
        """``study`` or ``pis``: the op graph ``family`` follows."""
        for fam, name in self.variants:
            if fam == family:
                return name if name in OP_GRAPHS else OP_GRAPHS[VARIANT_NAMES[family].index(name)]
        return self.op_graph or "pis"


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


def round_up(x: "np.ndarray | float", multiple: int) -> np.ndarray:
    """``x`` rounded up to a multiple of ``multiple``."""
    return (np.ceil(np.asarray(x, dtype=np.float64) / multiple - 1e-9) * multiple).astype(np.int64)


def _study_width(width: int, s: "float | np.ndarray") -> np.ndarray:
    # int((1 − s) · width) channels, rounded up to 16 (and never past the width)
    kept = np.floor((1.0 - np.asarray(s, dtype=np.float64)) * width + 1e-9)
    return np.where(np.asarray(s) > 0, np.minimum(width, np.maximum(16, round_up(kept, 16))), width)


def study_sublayers_removed(n_layers: "int | np.ndarray", s: "float | np.ndarray") -> np.ndarray:
    """Static depth, the study's op graph: int(s·L) attention and int(s·L) MLP sublayers go."""
    return np.floor(np.asarray(s, dtype=np.float64) * n_layers + 1e-9).astype(np.int64)


def study_kv_heads(spec: ModelSpec, s: "float | np.ndarray") -> np.ndarray:
    """Static width, the study's op graph: whole GQA groups kept, int((1−s)·G), at least one."""
    return np.maximum(1, np.floor((1.0 - np.asarray(s, dtype=np.float64)) * spec.kv_heads + 1e-9)).astype(np.int64)


def study_ffn(spec: ModelSpec, s: "float | np.ndarray") -> np.ndarray:
    """Static width, the study's op graph: int((1−s)·F) FFN channels rounded up to 16."""
    return _study_width(spec.ffn, s)


def study_hidden(spec: ModelSpec, s: "float | np.ndarray") -> np.ndarray:
    """Static width cross-layer, the study's op graph: int((1−s)·D) rounded up to 16."""
    return _study_width(spec.hidden, s)


def study_rank(n: "int | np.ndarray", k: "int | np.ndarray", s: "float | np.ndarray") -> np.ndarray:
    """Low rank, the study's op graph: int((1−s)·NK/(N+K)) rounded up to 16."""
    n, k = np.asarray(n, dtype=np.float64), np.asarray(k, dtype=np.float64)
    return np.maximum(16, round_up(np.floor((1.0 - np.asarray(s)) * n * k / (n + k) + 1e-9), 16))


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
