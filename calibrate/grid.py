"""Named calibration grids: which (op, shape) points a run measures, per device kind.

``tiny`` is for tests (seconds), ``quick`` a first usable profile (minutes), ``default`` the
recommended profile, ``full`` a denser one.

GPU grids follow where LLM inference lives: GEMM rows M from 1 to 65536, densely at small M
(decode: M = batch), N and K from 256 to 32768 (log-spaced, plus small widths for routers,
low-rank factors and block-score GEMMs, and lm-head widths up to 256K); attention prefill
sequences 128..32768 and decode KV lengths 128..131072, batch 1..256, head_dim 64/128, GQA
ratios 1/4/8; memory-bound ops over log-spaced element counts.

CPU grids cover what the CPU validation suite runs: hidden <= 2048, FFN <= 8192, heads <= 32,
head_dim 64/128, batch <= 8, prompt <= 512, context <= 2048 (KV length up to 4096 so C + 1 is
inside), M from 1 to 4096 (= 8 x 512) and lm-head widths up to 160K.

Points whose FLOPs or working set exceed the grid's caps are left out (CPU caps are much
lower). ``--model`` adds the model's exact GEMM widths and those of its width-pruned variants
(:func:`pis.pruned.calibration_shapes`) crossed with the grid's M values.

Point counts come from the code: ``python benchmarks/tools/grid_sizes.py`` prints them per
grid and device kind, with the measured duration of any profile it is given
(``docs/calibration.md``). The whole-decoder points are in :mod:`pis.calibrate.decoder_points`;
``--model`` also adds attention at the model's own head pairs (:func:`model_attention_points`).

Points come ordered by importance, so a run stopped early (``--time-budget``) already holds
what decode needs: the launch overhead, small-M GEMMs, the required memory-bound ops and decode
attention first; within a tier M varies fastest so consecutive GEMMs share their weight.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from pis.calibrate.decoder_points import decoder_points, decoder_shapes
from pis.calibrate.point import Point, point
from pis.errors import PisError
from pis.models import ModelSpec, load_model
from pis.profiles.schema import (DTYPE_BYTES, GRAPH_OPS, MEMORY_OPS, OPS, QUANTIZED_GEMM, REQUIRED_OPS,
                                 WHOLE_DECODER_OPS, op_bytes, op_flops)
from pis.pruned import calibration_shapes, pruned_heads

if TYPE_CHECKING:  # torch stays out of import time
    from pis.calibrate.timing import TimingConfig

GRID_NAMES: tuple[str, ...] = ("tiny", "quick", "default", "full")
#: Sparsities and alignment used for ``--model`` shapes.
MODEL_SPARSITIES: tuple[float, ...] = tuple(np.round(np.arange(10) / 10, 1))
#: Sparsities at which ``--model`` also measures dynamic width's prefill group attention
#: (q_len = (1-s)·S over S keys: a shape no dense grid holds, else priced by roofline).
ROUTED_KEEP_SPARSITIES: tuple[float, ...] = (0.25, 0.5, 0.75)
MODEL_ALIGN = 64
#: The int4 group size calibration measures (``--group-size``'s default, as common int4 kernels use).
QUANT_GROUP = 128


@dataclass(frozen=True)
class GridSpec:
    """The axes of one grid on one device kind."""

    gemm_m: tuple[int, ...]
    gemm_n: tuple[int, ...]
    gemm_k: tuple[int, ...]
    #: extra (n, k) weight shapes: routers (n = 1, 16), tiny widths
    gemm_extra: tuple[tuple[int, int], ...]
    #: lm-head-like wide GEMMs: N values x K values x M values
    wide_n: tuple[int, ...]
    wide_k: tuple[int, ...]
    wide_m: tuple[int, ...]
    gemm24_m: tuple[int, ...]
    gemm24_nk: tuple[int, ...]
    head_dims: tuple[int, ...]
    #: (heads, kv_heads) pairs
    heads: tuple[tuple[int, int], ...]
    prefill_batch: tuple[int, ...]
    prefill_seq: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_kv: tuple[int, ...]
    numel: tuple[int, ...]
    topk_m: tuple[int, ...]
    topk_n: tuple[int, ...]
    #: skip points above these (FLOPs per call; bytes of live tensors)
    max_flops: float
    max_bytes: float
    extra: dict[str, Any] = field(default_factory=dict)
    #: GEMMs with quantized weights (gemm_w8, gemm_w4 at QUANT_GROUP; gemm_fp8 on CUDA): M
    #: values x (N, K) from quant_nk squared, plus the model's widths with --model
    quant_m: tuple[int, ...] = ()
    quant_nk: tuple[int, ...] = ()
    #: FLOPs cap of the quantized GEMMs (None: max_flops). CPU weight-only kernels run many times
    #: slower than the native GEMM once M grows, so their cap is lower there.
    quant_max_flops: float | None = None


def _heads(heads: Iterable[int], ratios: Iterable[int]) -> tuple[tuple[int, int], ...]:
    return tuple((h, h // r) for h in heads for r in ratios if h % r == 0 and h // r >= 1)


def _pow2(lo: int, hi: int, step: int = 1) -> tuple[int, ...]:
    """Powers of two from 2**lo to 2**hi, every ``step``-th exponent."""
    return tuple(2 ** e for e in range(lo, hi + 1, step))


def _half_steps(lo: int, hi: int) -> tuple[int, ...]:
    """2**e and 1.5 * 2**e from 2**lo to 2**hi (a factor of about 1.4 between neighbours)."""
    vals = sorted({2 ** e for e in range(lo, hi + 1)} | {3 * 2 ** (e - 1) for e in range(lo + 1, hi + 1)})
    return tuple(v for v in vals if 2 ** lo <= v <= 2 ** hi)


_GPU_SMALL_M = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)
#: Query heads per K/V head of the CPU grids' attention. A CPU profile interpolates grouped-query
#: attention apart from the rest (simulator/opmodel.py, GROUPED), so the ratio 2 that static
#: width makes of the common 4 (16/4 heads pruned to 8/4) needs rows of its own: without them,
#: 8/4 lies outside the grouped rows and is extrapolated from ratios 4 and 8.
CPU_GQA_RATIOS: tuple[int, ...] = (1, 2, 4, 8)

_SPECS: dict[tuple[str, str], GridSpec] = {
    ("tiny", "cpu"): GridSpec(
        gemm_m=(1, 8, 64), gemm_n=(64, 256), gemm_k=(64, 256), gemm_extra=((1, 16),),
        wide_n=(), wide_k=(), wide_m=(), gemm24_m=(8,), gemm24_nk=(256,),
        head_dims=(64,), heads=((4, 1), (4, 4)), prefill_batch=(1,), prefill_seq=(16, 64),
        decode_batch=(1, 2), decode_kv=(64, 256), numel=(1024, 65536), topk_m=(4,), topk_n=(64,),
        max_flops=1e8, max_bytes=64e6,
        quant_m=(1, 8), quant_nk=(256,)),
    ("quick", "cpu"): GridSpec(
        gemm_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
        gemm_n=(16, 64, 256, 1024, 2048, 4096, 8192), gemm_k=(64, 256, 1024, 2048, 4096, 8192),
        gemm_extra=((1, 16), (16, 16)),
        wide_n=(32768, 163840), wide_k=(512, 2048), wide_m=(1, 8),
        gemm24_m=(64,), gemm24_nk=(2048,),
        head_dims=(64, 128), heads=_heads((4, 8, 32), CPU_GQA_RATIOS),
        prefill_batch=(1, 8), prefill_seq=(32, 128, 512),
        decode_batch=(1, 8), decode_kv=(64, 256, 1024, 4096),
        numel=_pow2(8, 24, 2) + (2 ** 25,), topk_m=(1, 64, 4096), topk_n=(4, 8, 16, 512),
        max_flops=2e10, max_bytes=2.5e9,
        quant_m=(1, 4, 16, 64, 256), quant_nk=(256, 1024, 4096), quant_max_flops=2e9),
    ("default", "cpu"): GridSpec(
        gemm_m=_pow2(0, 12), gemm_n=(16, 32, 64, 128) + _pow2(8, 13), gemm_k=(16, 32, 64, 128) + _pow2(8, 13),
        gemm_extra=((1, 16), (1, 64)),
        wide_n=(32768, 65536, 131072, 163840), wide_k=(512, 1024, 2048), wide_m=(1, 2, 4, 8, 16),
        gemm24_m=(64,), gemm24_nk=(2048,),
        head_dims=(64, 128), heads=_heads((4, 8, 16, 32), CPU_GQA_RATIOS),
        prefill_batch=(1, 2, 4, 8), prefill_seq=(16, 32, 64, 128, 256, 512),
        decode_batch=(1, 2, 4, 8), decode_kv=_pow2(6, 12),
        numel=_pow2(8, 25), topk_m=(1, 8, 64, 512, 4096), topk_n=(4, 8, 16, 64, 512, 2048),
        max_flops=2e11, max_bytes=4e9,
        quant_m=(1, 2, 4, 8, 16, 64, 256), quant_nk=(256, 1024, 2048, 4096, 8192),
        quant_max_flops=2e9),
    ("full", "cpu"): GridSpec(
        gemm_m=_half_steps(0, 12), gemm_n=(1, 8, 16, 32, 64, 128) + _half_steps(8, 13),
        gemm_k=(16, 32, 64, 128) + _half_steps(8, 13), gemm_extra=(),
        wide_n=(32768, 65536, 131072, 163840, 262144), wide_k=(512, 1024, 2048, 4096), wide_m=_pow2(0, 5),
        gemm24_m=(64,), gemm24_nk=(2048,),
        head_dims=(64, 128), heads=_heads((2, 4, 8, 16, 32), (1, 2, 4, 8)),
        prefill_batch=_pow2(0, 4), prefill_seq=_pow2(4, 10),
        decode_batch=_pow2(0, 4), decode_kv=_pow2(5, 13),
        numel=_half_steps(8, 26), topk_m=(1, 8, 64, 512, 4096), topk_n=(4, 8, 16, 64, 512, 2048, 8192),
        max_flops=1e12, max_bytes=6e9,
        quant_m=_pow2(0, 11), quant_nk=_half_steps(8, 13), quant_max_flops=8e9),
    ("tiny", "cuda"): GridSpec(
        gemm_m=(1, 16, 256), gemm_n=(256, 1024), gemm_k=(256, 1024), gemm_extra=((1, 16),),
        wide_n=(), wide_k=(), wide_m=(), gemm24_m=(16, 256), gemm24_nk=(1024,),
        head_dims=(128,), heads=((8, 2), (8, 8)), prefill_batch=(1,), prefill_seq=(128, 512),
        decode_batch=(1, 8), decode_kv=(128, 1024), numel=(4096, 2 ** 20), topk_m=(64,), topk_n=(512,),
        max_flops=1e12, max_bytes=1e9,
        quant_m=(1, 16, 256), quant_nk=(1024,)),
    ("quick", "cuda"): GridSpec(
        gemm_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536),
        gemm_n=(16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
        gemm_k=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
        gemm_extra=((1, 16), (16, 16)),
        wide_n=(65536, 131072, 262144), wide_k=(2048, 4096, 8192), wide_m=(1, 8, 64, 256),
        gemm24_m=(1, 16, 128, 1024, 8192), gemm24_nk=(1024, 4096, 16384),
        head_dims=(64, 128), heads=_heads((8, 32, 64), (1, 4, 8)),
        prefill_batch=(1, 4, 16, 64), prefill_seq=(128, 512, 2048, 8192, 32768),
        decode_batch=(1, 4, 16, 64, 256), decode_kv=(128, 512, 2048, 8192, 32768, 131072),
        numel=_pow2(10, 30, 2), topk_m=(1, 64, 4096, 65536), topk_n=(4, 8, 16, 512, 8192),
        max_flops=4e13, max_bytes=24e9,
        quant_m=(1, 4, 16, 64, 256, 1024, 4096, 16384), quant_nk=(1024, 4096, 16384)),
    ("default", "cuda"): GridSpec(
        gemm_m=_GPU_SMALL_M + (192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192,
                               12288, 16384, 32768, 65536),
        gemm_n=(16, 32, 64, 128) + _half_steps(8, 15), gemm_k=(16, 32, 64, 128) + _pow2(8, 15),
        gemm_extra=((1, 16), (1, 64)),
        wide_n=(49152, 65536, 98304, 131072, 163840, 262144), wide_k=(1024, 2048, 4096, 8192, 16384),
        wide_m=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
        gemm24_m=(1, 4, 16, 64, 256, 1024, 4096, 16384), gemm24_nk=_pow2(10, 15),
        head_dims=(64, 128), heads=_heads((4, 8, 16, 32, 64), (1, 4, 8)),
        prefill_batch=_pow2(0, 6, 1), prefill_seq=_pow2(7, 15),
        decode_batch=_pow2(0, 8), decode_kv=_pow2(7, 17),
        numel=_pow2(10, 31), topk_m=(1, 8, 64, 512, 4096, 65536), topk_n=(4, 8, 16, 64, 512, 2048, 8192),
        max_flops=6e13, max_bytes=32e9,
        quant_m=_GPU_SMALL_M + (256, 512, 1024, 2048, 4096, 8192, 16384), quant_nk=_pow2(10, 15)),
    ("full", "cuda"): GridSpec(
        gemm_m=tuple(sorted(set(_GPU_SMALL_M) | set(_half_steps(0, 16)) | set(range(8, 129, 8)))),
        gemm_n=(1, 8, 16, 32, 64, 128) + _half_steps(8, 15), gemm_k=(16, 32, 64, 128) + _half_steps(8, 15),
        gemm_extra=(),
        wide_n=(49152, 65536, 98304, 131072, 163840, 196608, 262144), wide_k=_half_steps(10, 14),
        wide_m=_pow2(0, 12),
        gemm24_m=_pow2(0, 16), gemm24_nk=_half_steps(10, 15),
        head_dims=(64, 128), heads=_heads((2, 4, 8, 16, 32, 64, 128), (1, 2, 4, 8)),
        prefill_batch=_pow2(0, 7), prefill_seq=_pow2(6, 15),
        decode_batch=_pow2(0, 8), decode_kv=_pow2(6, 17),
        numel=_half_steps(10, 31), topk_m=(1, 8, 64, 512, 4096, 65536), topk_n=(4, 8, 16, 64, 512, 2048, 8192, 32768),
        max_flops=2e14, max_bytes=48e9,
        quant_m=_pow2(0, 16), quant_nk=_half_steps(10, 15)),
}


def model_attention_points(name: str, device_kind: str, dims: dict[str, int]) -> list[Point]:
    """Attention at the model's own head_dim and (query heads, KV heads) pairs: dense, every
    static-width head count (K/V heads stay), and dynamic width's per-group attention.

    The grid's generic head pairs rarely include the model's GQA ratio, and attention
    interpolated across GQA ratios misses decode badly. Batch and lengths are the grid's axes
    plus those of the whole-decoder points (:func:`decoder_points`), so the op sums the in-model
    factor divides by hold measured attention too.
    """
    spec = grid_spec(name, device_kind)
    m = ModelSpec("grid-model", hidden=int(dims["hidden"]), ffn=int(dims["ffn"]), layers=int(dims["layers"]),
                  heads=int(dims["heads"]), kv_heads=int(dims["kv_heads"]), head_dim=int(dims["head_dim"]),
                  vocab=1)
    g = m.kv_heads
    pairs = sorted({(int(h), g) for h in pruned_heads(m, np.asarray(MODEL_SPARSITIES))} | {(m.heads, g), (m.heads // g, 1)})
    prefill, decode = decoder_shapes(name, device_kind)
    pre_b = sorted(set(spec.prefill_batch) | {b for b, _ in prefill})
    pre_s = sorted(set(spec.prefill_seq) | {q for _, q in prefill})
    dec_b = sorted(set(spec.decode_batch) | {b for b, _ in decode})
    dec_c = sorted(set(spec.decode_kv) | {c for _, c in decode})
    d = m.head_dim
    pts = [point("attn_prefill", batch=b, q_len=q, kv_len=q, heads=h, kv_heads=kv, head_dim=d, causal=1)
           for (h, kv), b, q in itertools.product(pairs, pre_b, pre_s)]
    # Dynamic width's prefill groups attend with their kept share of queries over every key.
    pts += [point("attn_prefill", batch=b, q_len=math.ceil((1.0 - r) * q), kv_len=q, heads=m.heads // g,
                  kv_heads=1, head_dim=d, causal=1)
            for r, b, q in itertools.product(ROUTED_KEEP_SPARSITIES, pre_b, pre_s)]
    pts += [point("attn_decode", batch=b, q_len=1, kv_len=c, heads=h, kv_heads=kv, head_dim=d, causal=0)
            for (h, kv), b, c in itertools.product(pairs, dec_b, dec_c)]
    return pts


def grid_spec(name: str, device_kind: str) -> GridSpec:
    """The axes of grid ``name`` for ``device_kind`` (``cpu`` or ``cuda``)."""
    if name not in GRID_NAMES:
        raise PisError(f"unknown grid {name!r}; choose one of {', '.join(GRID_NAMES)}")
    return _SPECS[(name, "cuda" if device_kind == "cuda" else "cpu")]


def live_bytes(op: str, shape: dict[str, int], dtype: str) -> float:
    """Rough bytes of the tensors one call keeps alive (inputs, outputs, temporaries)."""
    e = DTYPE_BYTES[dtype]
    if op.startswith("gemm"):
        return e * (shape["m"] * shape["k"] + shape["n"] * shape["k"] + shape["m"] * shape["n"])
    if op.startswith("attn"):
        # Fused kernels keep q, k, v, out; the math fallback also materializes the scores.
        scores = shape["batch"] * shape["heads"] * shape["q_len"] * shape["kv_len"] * 4
        return float(op_bytes(op, shape, dtype)) + min(scores, 2e9)
    if op == "topk":
        return e * shape["m"] * shape["n"] * 2
    if not OPS[op].columns:  # overhead, host_glue: scalars
        return 0.0
    return 4.0 * e * shape["numel"]  # inputs, output and the 2x tables of gather/scatter


def _gemm_points(spec: GridSpec, pairs: Iterable[tuple[int, int]], ms: Iterable[int], op: str = "gemm") -> list[Point]:
    return [point(op, m=m, n=n, k=k) for n, k in pairs for m in ms]


def _points(spec: GridSpec, device_kind: str, model_pairs: Sequence[tuple[int, int]]) -> list[Point]:
    pts: list[Point] = [point("overhead"), point("host_glue")]
    pairs = list(itertools.product(spec.gemm_n, spec.gemm_k)) + list(spec.gemm_extra)
    pts += _gemm_points(spec, pairs, spec.gemm_m)
    pts += _gemm_points(spec, itertools.product(spec.wide_n, spec.wide_k), spec.wide_m)
    pts += _gemm_points(spec, model_pairs, spec.gemm_m)
    pts += _gemm_points(spec, itertools.product(spec.gemm24_nk, spec.gemm24_nk), spec.gemm24_m, "gemm_2to4")
    if device_kind == "cuda":
        # 2:4 for the model's widths too (kernels need N, K multiples of 64), eager and in a graph.
        pairs24 = [(n, k) for n, k in model_pairs if n % 64 == 0 and k % 64 == 0]
        pts += _gemm_points(spec, pairs24, spec.gemm24_m, "gemm_2to4")
        pts += _gemm_points(spec, itertools.product(spec.gemm24_nk, spec.gemm24_nk), spec.gemm24_m, "gemm_2to4_graph")
        pts += _gemm_points(spec, pairs24, spec.gemm24_m, "gemm_2to4_graph")
        if spec is not _SPECS[("tiny", "cuda")]:  # each shape compiles a kernel: not on the tiny grid
            pts += _block_sparse_points(spec)
    for d, (h, g), b, s in itertools.product(spec.head_dims, spec.heads, spec.prefill_batch, spec.prefill_seq):
        pts.append(point("attn_prefill", batch=b, q_len=s, kv_len=s, heads=h, kv_heads=g, head_dim=d, causal=1))
    for d, (h, g), b, c in itertools.product(spec.head_dims, spec.heads, spec.decode_batch, spec.decode_kv):
        pts.append(point("attn_decode", batch=b, q_len=1, kv_len=c, heads=h, kv_heads=g, head_dim=d, causal=0))
    for op in MEMORY_OPS:
        if op in GRAPH_OPS and device_kind != "cuda":
            continue  # graph execution's kernels: CUDA grids only
        pts += [point(op, numel=x) for x in spec.numel]
    for m, n in itertools.product(spec.topk_m, spec.topk_n):
        pts += [point("topk", m=m, n=n, k=k) for k in sorted({min(4, n), n // 2})]
    return pts


#: Sparsities whose GEMM widths ``--model`` adds for the quantized GEMMs (fewer than for native
#: GEMMs: each quantized format doubles or triples the points).
QUANT_MODEL_SPARSITIES: tuple[float, ...] = (0.0, 0.25, 0.5)


def _quantized_points(spec: GridSpec, device_kind: str, dims: dict[str, int] | None) -> list[Point]:
    """GEMMs with int8 and int4 weights (and fp8 on CUDA) at the grid's quantized axes and, with
    ``--model``, the model's widths at :data:`QUANT_MODEL_SPARSITIES`; int4 at
    :data:`QUANT_GROUP`, or the largest group dividing a smaller K (as the quantizer groups it)."""
    pairs = list(itertools.product(spec.quant_nk, spec.quant_nk))
    if dims:
        m = ModelSpec("grid-model", **{f: int(dims[f]) for f in ("hidden", "ffn", "layers", "heads", "kv_heads",
                                                                 "head_dim", "vocab")})
        pairs += [(n, k) for n, k in calibration_shapes(m, QUANT_MODEL_SPARSITIES, MODEL_ALIGN)
                  if n > 16 and n != m.vocab]
    ops = ("gemm_w8", "gemm_w4") + (("gemm_fp8",) if device_kind == "cuda" else ())
    pts: list[Point] = []
    for op in ops:
        for n, k in pairs:
            extra = {"group_size": math.gcd(int(k), QUANT_GROUP)} if op == "gemm_w4" else {}
            pts += [point(op, m=m, n=n, k=k, **extra) for m in spec.quant_m]
    return pts


#: Block-sparse attention's sparsities (percent), and its shapes at the study's lengths. Every
#: shape compiles its own FlexAttention kernel (seconds each), so the set stays small.
BLOCK_SPARSE_PCT: tuple[int, ...] = (25, 50, 75)
BLOCK_SPARSE_SHAPES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "prefill": ((1, 32), (1024,)), "decode": ((1, 32), (4096, 32768))}


def _block_sparse_points(spec: GridSpec) -> list[Point]:
    """Tile-skipping block-sparse attention at Llama-3.1-8B's heads (32 over 8, d 128), the
    study's lengths, three sparsities."""
    out = []
    for (h, g), pct in itertools.product([(32, 8)], BLOCK_SPARSE_PCT):
        for b, n in itertools.product(*BLOCK_SPARSE_SHAPES["prefill"]):
            out.append(point("attn_block_sparse", batch=b, q_len=n, kv_len=n, heads=h, kv_heads=g, head_dim=128,
                             causal=1, sparsity_pct=pct))
        for b, c in itertools.product(*BLOCK_SPARSE_SHAPES["decode"]):
            out.append(point("attn_block_sparse", batch=b, q_len=1, kv_len=c + 1, heads=h, kv_heads=g,
                             head_dim=128, causal=0, sparsity_pct=pct))
    return out


def _tier(p: Point) -> int:
    """0 = measure first. Decode needs overhead, small-M GEMMs, norms/elementwise, decode attention."""
    s = p.shape_dict
    if not p.shape:  # overhead, host_glue: one cheap scalar each
        return 0
    if p.op in WHOLE_DECODER_OPS:
        # Few (tens) but they set every prediction's in-model factor: a run cut short by
        # --time-budget should keep them rather than the largest GEMMs of tier 4.
        return 3
    if p.op == "gemm" and s["m"] <= 16:
        return 1
    if p.op in REQUIRED_OPS and p.op in MEMORY_OPS or p.op == "attn_decode":
        return 2
    if (p.op == "gemm" and s["m"] <= 512) or p.op == "attn_prefill":
        return 3
    return 4


def _order(p: Point) -> tuple:
    s = p.shape_dict
    op_rank = list(OPS).index(p.op)
    if p.op.startswith("gemm"):
        return (_tier(p), op_rank, s["n"], s["k"], s["m"])  # M fastest: weights are reused
    return (_tier(p), op_rank, p.shape)


@dataclass(frozen=True)
class Grid:
    """The ordered points of one run, and what defines them."""

    name: str
    device_kind: str
    points: tuple[Point, ...]
    params: dict[str, Any]


def build_grid(name: str, device_kind: str, dtype: str, model_pairs: Sequence[tuple[int, int]] = (),
               model_name: str | None = None, model_dims: dict[str, int] | None = None,
               only: Sequence[str] | None = None) -> Grid:
    """The deduplicated, capped and importance-ordered points of grid ``name``; with ``only``,
    just those ops' points (to add or redo some ops of a profile, then ``pis-profile merge``)."""
    if only is not None:
        unknown = sorted(set(only) - set(OPS))
        if unknown or not only:
            raise PisError(f"--only: unknown op(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(OPS)}")
    spec = grid_spec(name, device_kind)
    seen: set[Point] = set()
    kept: list[Point] = []
    extra = model_attention_points(name, device_kind, model_dims) if model_dims else []
    pts = _points(spec, device_kind, model_pairs) + _quantized_points(spec, device_kind, model_dims)
    for p in pts + extra + decoder_points(name, device_kind, model_dims):
        if p in seen:
            continue
        seen.add(p)
        if only is not None and p.op not in only:
            continue
        s = p.shape_dict
        if p.shape and p.op not in WHOLE_DECODER_OPS:
            cap = spec.quant_max_flops if p.op in QUANTIZED_GEMM.values() and spec.quant_max_flops else spec.max_flops
            if float(op_flops(p.op, s)) > cap or live_bytes(p.op, s, dtype) > spec.max_bytes:
                continue
        kept.append(p)
    kept.sort(key=_order)
    digest = hashlib.sha256(json.dumps([[p.op, list(p.shape)] for p in kept]).encode()).hexdigest()[:16]
    params: dict[str, Any] = {
        "grid": name, "device_kind": device_kind, "points": len(kept), "points_sha256": digest,
        "max_flops": spec.max_flops, "max_bytes": spec.max_bytes,
    }
    if model_name:
        params["model"] = model_name
        params["model_pairs"] = len(model_pairs)
    if only is not None:
        params["only"] = sorted(set(only))
    return Grid(name, device_kind, tuple(kept), params)


#: How many times each whole-decoder point is measured on the default and full grids, per device
#: kind (the tiny and quick grids: once, to stay quick). They set the absolute level of every
#: in-model prediction, and on a shared machine a single pass can land in a slow window and set
#: them all high. The median of passes spread over the run is less at the mercy of one window.
DECODER_PASSES: dict[str, int] = {"cpu": 3, "cuda": 1}


def decoder_passes(name: str, device_kind: str) -> int:
    """The default number of passes over the whole-decoder points (:data:`DECODER_PASSES`)."""
    return 1 if name in ("tiny", "quick") else DECODER_PASSES["cuda" if device_kind == "cuda" else "cpu"]


def schedule(points: Sequence[Point], passes: int) -> list[tuple[Point, int]]:
    """The run's measurements in order: ``(point, pass)``, every point once and each
    whole-decoder point (:data:`WHOLE_DECODER_OPS`) ``passes`` times, spread over the run.

    Pass 0 follows the tier-0 scalars (so it comes first), pass 1 sits at the points' own
    place in the grid order, and passes 2 and on come last. With one pass the order is the
    grid's.
    """
    ctx = [p for p in points if p.op in WHOLE_DECODER_OPS]
    if passes <= 1 or not ctx:
        return [(p, 0) for p in points]
    first = [p for p in points if _tier(p) == 0 and p.op not in WHOLE_DECODER_OPS]
    rest = [p for p in points if _tier(p) != 0 or p.op in WHOLE_DECODER_OPS]
    out = [(p, 0) for p in first] + [(p, 0) for p in ctx]
    out += [(p, 1 if p.op in WHOLE_DECODER_OPS else 0) for p in rest]
    for k in range(2, passes):
        out += [(p, k) for p in ctx]
    return out


def model_pairs(model: str) -> tuple[str, list[tuple[int, int]], dict[str, Any]]:
    """(name, (n, k) GEMM weight shapes, dimensions) of ``model`` and its width-pruned variants."""
    spec = load_model(model)
    pairs = [(int(n), int(k)) for n, k in calibration_shapes(spec, MODEL_SPARSITIES, MODEL_ALIGN)]
    dims = {f: getattr(spec, f) for f in ("hidden", "ffn", "layers", "heads", "kv_heads", "head_dim", "vocab")}
    return spec.name, pairs, dims


def count_points(device_kind: str, dtype: str) -> dict[str, dict[str, int]]:
    """Point count per op of every named grid on ``device_kind`` (for docs and tests)."""
    out = {}
    for name in GRID_NAMES:
        g = build_grid(name, device_kind, dtype)
        counts: dict[str, int] = {}
        for p in g.points:
            counts[p.op] = counts.get(p.op, 0) + 1
        counts["total"] = len(g.points)
        out[name] = counts
    return out


def timing_config(name: str, device_kind: str, cuda_graphs: bool = False) -> "TimingConfig":
    """How long to measure each point of grid ``name`` (longer grids measure more carefully)."""
    from pis.calibrate.timing import TimingConfig

    cuda = device_kind == "cuda"
    # (target seconds per point, min repeats, max repeats, warm-up calls, max spread)
    table = {
        "tiny": (0.002, 3, 10, 1, 1.0),
        "quick": (0.02, 10, 200, 3, 0.2) if cuda else (0.02, 3, 50, 1, 0.5),
        "default": (0.05, 20, 500, 5, 0.15) if cuda else (0.1, 5, 200, 2, 0.3),
        "full": (0.1, 30, 1000, 5, 0.1) if cuda else (0.2, 7, 500, 2, 0.25),
    }
    target, lo, hi, warm, spread = table[name]
    return TimingConfig(target_s=target, min_repeats=lo, max_repeats=hi, warmup=warm,
                        max_spread=spread, cuda_graphs=cuda_graphs and cuda)
