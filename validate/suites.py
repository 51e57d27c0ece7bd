"""Validation suites: the pruned configurations ``pis-validate`` runs, per device kind.

CPU suites use a small Llama-shaped model so that they run on a couple of cores; GPU suites use
the Llama-3.1-8B shapes with fewer layers (latency is additive over layers; the reported model
says how many). ``tiny`` is CI's smoke test, ``quick`` about a dozen configurations, ``full``
every family in both phases at several batch sizes and lengths, and dense, static depth, static
width and low rank with quantized weights (int8 and int4 on a CPU; fp8, int8 and int4 on a GPU).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Iterable

from pis.errors import PisError
from pis.models import PRESETS, ModelSpec
from pis.pruned import OP_GRAPHS, ROUTED_FAMILIES, VARIANT_NAMES, PruneOptions

SUITES: tuple[str, ...] = ("tiny", "quick", "full")

#: Small Llama-shaped models that run quickly on two CPU cores.
CPU_TINY = ModelSpec("cpu-tiny", hidden=256, ffn=704, layers=2, heads=4, kv_heads=2, head_dim=64, vocab=2048)
CPU_SMALL = ModelSpec("cpu-small", hidden=1024, ffn=2816, layers=4, heads=16, kv_heads=4, head_dim=64,
                      vocab=8192)


def gpu_model(layers: int) -> ModelSpec:
    """Llama-3.1-8B shapes with ``layers`` decoder layers."""
    base = PRESETS["llama-3.1-8b"]
    return base.with_options(name=f"llama-3.1-8b-{layers}L", layers=layers)


@dataclass(frozen=True)
class Config:
    """One validated design point."""

    spec: ModelSpec
    method: str
    sparsity: float
    phase: str
    batch: int
    seq_len: int
    context: int
    granularity: str = "layer"
    #: run ``dense`` on the reference decoder (cross-check with HF dense)
    reference: bool = False
    #: "eager" or "graph" (the step captured in one CUDA graph and replayed)
    execution: str = "eager"
    #: the family's op graph: "study" or "pis" (None: the execution's default, study under graph)
    variant: str | None = None
    #: the decoder's weight format: "native" or a quantized one (Hugging Face families only)
    weights: str = "native"
    #: int4 weights per scale and zero along K
    group_size: int = 128

    @property
    def backend(self) -> str:
        return "reference" if self.reference or self.method in ROUTED_FAMILIES else "hf"

    @property
    def op_graph(self) -> str:
        """The op graph this configuration runs and is predicted with."""
        return self.variant or ("study" if self.execution == "graph" else "pis")

    @property
    def label(self) -> str:
        name = self.method + ("[ref]" if self.reference else "")
        if self.method in VARIANT_NAMES and self.op_graph != ("study" if self.execution == "graph" else "pis"):
            name += f"[{VARIANT_NAMES[self.method][OP_GRAPHS.index(self.op_graph)]}]"
        if self.granularity != "layer":
            name += f"/{self.granularity}"
        if self.weights != "native":
            name += f"+{self.weights}" + (f"g{self.group_size}" if self.weights == "int4" and self.group_size != 128 else "")
        shape = f"S={self.seq_len}" if self.phase == "prefill" else f"C={self.context}"
        graph = " graph" if self.execution == "graph" else ""
        return f"{name} s={self.sparsity:g} {self.phase}{graph} B={self.batch} {shape}"

    @property
    def model_key(self) -> tuple:
        return (self.spec, self.method, self.sparsity, self.granularity, self.reference, self.op_graph, self.weights,
                self.group_size)

    def options(self) -> PruneOptions:
        # HF eager decode appends to a DynamicCache (a copy per layer); the reference decoder
        # and every graph-captured step write a preallocated cache in place, so each executor is
        # predicted with its own discipline.
        kv = "preallocated" if self.backend == "reference" or self.execution == "graph" else "concat"
        return PruneOptions(granularity=self.granularity, kv_cache=kv, execution=self.execution,
                            op_graph=self.op_graph, weights=self.weights, group_size=self.group_size)


def _points(spec: ModelSpec, method: str, sparsity: float, phase: str,
            shapes: Iterable[tuple[int, int]], **kw) -> list[Config]:
    # shapes: (batch, seq_len) in prefill, (batch, context) in decode
    out = []
    for b, n in shapes:
        seq, ctx = (n, 0) if phase == "prefill" else (1, n)
        out.append(Config(spec, method, sparsity, phase, b, seq, ctx, **kw))
    return out


def _suite_cpu(suite: str) -> list[Config]:
    if suite == "tiny":
        m = CPU_TINY
        return (_points(m, "dense", 0.0, "prefill", [(1, 64)])
                + _points(m, "static-width", 0.5, "decode", [(2, 128)])
                + _points(m, "dynamic-depth", 0.5, "prefill", [(2, 64)]))
    m = CPU_SMALL
    if suite == "quick":
        pre, dec = [(1, 256)], [(4, 512)]
        cfgs = (_points(m, "dense", 0.0, "prefill", pre) + _points(m, "dense", 0.0, "decode", dec)
                + _points(m, "dense", 0.0, "prefill", pre, reference=True)
                + _points(m, "static-depth", 0.5, "prefill", pre)
                + _points(m, "static-width", 0.5, "prefill", pre) + _points(m, "static-width", 0.5, "decode", dec)
                + _points(m, "static-width-hidden", 0.25, "prefill", pre)
                + _points(m, "low-rank", 0.5, "prefill", pre)
                + _points(m, "unstructured", 0.5, "decode", dec)
                + _points(m, "dynamic-depth", 0.5, "prefill", pre) + _points(m, "dynamic-depth", 0.5, "decode", dec)
                + _points(m, "sparse-attention", 0.5, "prefill", [(1, 512)])
                + _points(m, "sparse-attention", 0.75, "decode", [(4, 2048)])
                + _points(m, "dynamic-width", 0.5, "prefill", pre)
                + _points(m, "dense", 0.0, "decode", dec, weights="int8")
                + _points(m, "static-depth", 0.5, "decode", dec, weights="int4"))
        return cfgs
    pre, dec = [(1, 128), (1, 512), (4, 256)], [(1, 1024), (8, 512), (4, 2048)]
    cfgs = []
    for method, s, kw in _FULL_FAMILIES:
        cfgs += _points(m, method, s, "prefill", pre, **kw) + _points(m, method, s, "decode", dec, **kw)
    # Hugging Face decode either side of the allocation cliff (25 and 38 MB K/V cache per layer
    # against glibc's 32 MiB mmap threshold), at points the calibration grid does not hold.
    for method, s in (("dense", 0.0), ("static-depth", 0.5), ("static-width", 0.5), ("low-rank", 0.5)):
        cfgs += _points(m, method, s, "decode", [(8, 3072), (12, 3072)])
    # The study's static width: whole GQA groups pruned, which Hugging Face runs natively with
    # fewer KV heads (K, V and the cache shrink too).
    cfgs += (_points(m, "static-width", 0.5, "prefill", pre, variant="study")
             + _points(m, "static-width", 0.5, "decode", dec, variant="study"))
    # Quantized weights: int8 and int4 weight-only linears (torch's packed kernels), decode and a
    # short prompt (their CPU kernels run many times slower than fp32 GEMMs once M grows).
    for (method, s), w in itertools.product(QUANTIZED_FAMILIES, ("int8", "int4")):
        cfgs += (_points(m, method, s, "prefill", [(1, 128)], weights=w)
                 + _points(m, method, s, "decode", [(1, 1024), (8, 512)], weights=w))
    return cfgs


#: (method, sparsity) validated with quantized weights.
QUANTIZED_FAMILIES: tuple[tuple[str, float], ...] = (
    ("dense", 0.0), ("static-depth", 0.5), ("static-width", 0.5), ("low-rank", 0.5))


def _suite_gpu(suite: str) -> list[Config]:
    if suite == "tiny":
        m = gpu_model(2)
        return (_points(m, "dense", 0.0, "prefill", [(1, 512)])
                + _points(m, "static-width", 0.5, "decode", [(8, 2048)])
                + _points(m, "dynamic-depth", 0.5, "prefill", [(1, 512)]))
    m = gpu_model(4)
    if suite == "quick":
        pre, dec = [(1, 2048)], [(16, 4096)]
        return (_points(m, "dense", 0.0, "prefill", pre) + _points(m, "dense", 0.0, "decode", dec)
                + _points(m, "dense", 0.0, "prefill", pre, reference=True)
                + _points(m, "static-depth", 0.5, "prefill", pre)
                + _points(m, "static-width", 0.5, "prefill", pre) + _points(m, "static-width", 0.5, "decode", dec)
                + _points(m, "low-rank", 0.5, "prefill", pre)
                + _points(m, "semi-structured", 0.5, "prefill", pre)
                + _points(m, "dynamic-depth", 0.5, "prefill", pre) + _points(m, "dynamic-depth", 0.5, "decode", dec)
                + _points(m, "sparse-attention", 0.75, "decode", [(16, 8192)])
                + _points(m, "dynamic-width", 0.5, "prefill", pre))
    pre, dec = [(1, 512), (1, 2048), (8, 1024)], [(1, 4096), (16, 2048), (64, 4096)]
    cfgs = []
    for method, s, kw in _FULL_FAMILIES + [("semi-structured", 0.5, {})]:
        cfgs += _points(m, method, s, "prefill", pre, **kw) + _points(m, method, s, "decode", dec, **kw)
    for (method, s), w in itertools.product(QUANTIZED_FAMILIES[:2], GPU_WEIGHTS):
        cfgs += (_points(m, method, s, "prefill", [(1, 2048)], weights=w)
                 + _points(m, method, s, "decode", [(1, 4096), (64, 4096)], weights=w))
    return cfgs


#: Quantized weight formats of the GPU suites (fp8 needs sm89+; elsewhere its rows are skipped).
GPU_WEIGHTS: tuple[str, ...] = ("fp8", "int8", "int4")


#: (method, sparsity, Config options) of the full suites.
_FULL_FAMILIES: list[tuple[str, float, dict]] = [
    ("dense", 0.0, {}), ("dense", 0.0, {"reference": True}),
    ("static-depth", 0.5, {}), ("static-depth", 0.25, {"granularity": "sublayer"}),
    ("static-width", 0.5, {}), ("static-width-hidden", 0.25, {}), ("low-rank", 0.5, {}),
    ("unstructured", 0.5, {}), ("dynamic-depth", 0.5, {}), ("sparse-attention", 0.75, {}),
    ("dynamic-width", 0.5, {}),
]


def _suite_graph(suite: str) -> list[Config]:
    """Graph execution (the study's regime) on Llama-3.1-8B's shapes, at the study's lengths:
    prefill S = 1024, decode context 4096 and 32768, batch 1, 8 and 32."""
    g = dict(execution="graph")
    if suite == "tiny":
        m = gpu_model(2)
        return (_points(m, "dense", 0.0, "prefill", [(1, 1024)], **g)
                + _points(m, "static-width", 0.5, "decode", [(8, 4096)], **g))
    m = gpu_model(4)
    if suite == "quick":
        pre, dec = [(8, 1024)], [(1, 4096), (32, 32768)]
        methods = ("dense", "static-depth", "static-width", "low-rank", "semi-structured")
        return [c for meth in methods for c in (_points(m, meth, 0.0 if meth == "dense" else 0.5, "prefill", pre, **g)
                                                 + _points(m, meth, 0.0 if meth == "dense" else 0.5, "decode", dec, **g))]
    all_pre, all_dec = [(1, 1024), (8, 1024), (32, 1024)], [(b, c) for b in (1, 8, 32) for c in (4096, 32768)]
    cfgs = _points(m, "dense", 0.0, "prefill", all_pre, **g) + _points(m, "dense", 0.0, "decode", all_dec, **g)
    pre, dec = [(8, 1024)], [(1, 4096), (32, 32768)]
    for method, s, kw in GRAPH_FAMILIES:
        cfgs += _points(m, method, s, "prefill", pre, **g, **kw) + _points(m, method, s, "decode", dec, **g, **kw)
    for (method, s), w in itertools.product(QUANTIZED_FAMILIES[:2], GPU_WEIGHTS):
        cfgs += _points(m, method, s, "prefill", pre, weights=w, **g) + _points(m, method, s, "decode", dec, weights=w, **g)
    return cfgs


#: (method, sparsity, Config options) of the full graph suite beside dense.
GRAPH_FAMILIES: list[tuple[str, float, dict]] = [
    ("static-depth", 0.5, {}), ("static-width", 0.5, {}), ("static-width", 0.5, {"variant": "pis"}),
    ("static-width-hidden", 0.5, {}), ("semi-structured", 0.5, {}), ("unstructured", 0.5, {}),
    ("low-rank", 0.5, {}), ("dynamic-depth", 0.5, {}), ("sparse-attention", 0.5, {}),
    ("dynamic-width", 0.5, {}),
]


def suite_configs(suite: str, device_kind: str, execution: str = "eager") -> list[Config]:
    """The configurations of ``suite`` for a ``cpu`` or ``cuda`` device, run ``execution``."""
    if suite not in SUITES:
        raise PisError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    if execution == "graph":
        if device_kind != "cuda":
            raise PisError("graph execution replays CUDA graphs: it needs a CUDA device (--execution eager)")
        return _suite_graph(suite)
    return _suite_gpu(suite) if device_kind == "cuda" else _suite_cpu(suite)


def with_weights(configs: Iterable[Config], formats: Iterable[str]) -> list[Config]:
    """The suite's native configurations once per weight format of ``formats`` (``pis-validate
    --weights``); quantized formats take the Hugging Face families only (the reference decoder
    runs native weights)."""
    out: dict[str, Config] = {}
    for w in formats:
        for c in configs:
            if c.weights == "native" and (w == "native" or c.backend == "hf"):
                q = replace(c, weights=w)
                out.setdefault(q.label, q)
    return list(out.values())


def suite_models(configs: Iterable[Config]) -> list[ModelSpec]:
    """The distinct model shapes a list of configurations runs."""
    return list(dict.fromkeys(c.spec for c in configs))
