"""The profile format: op kinds, their shape columns, and their FLOP / byte counts.

A profile is a Parquet table with one row per measured point (see ``profiles/README.md``).
This module is the single definition both stages share: calibration writes these columns,
the simulator reads them, and the speed-of-light formulas below give every op its roofline
(used for utilization interpolation and for theoretical speedups).

All cost functions are vectorized: shape arguments may be numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

SCHEMA_VERSION = 6

#: Every shape column a profile may carry; columns an op does not use are null.
SHAPE_COLUMNS: tuple[str, ...] = (
    "m", "n", "k",
    "batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal",
    "numel",
    "hidden", "ffn", "layers",
    "sparsity_pct",
    "group_size",
)
#: Shape columns added after schema v1; v1 files lack them and read as null.
SHAPE_COLUMNS_SINCE_V2: tuple[str, ...] = ("hidden", "ffn", "layers")
#: Shape columns added in schema v3 (the routed decoders' sparsity); older files read as null.
SHAPE_COLUMNS_SINCE_V3: tuple[str, ...] = ("sparsity_pct",)
#: Shape columns added in schema v6 (the group size of 4-bit weights); older files read as null.
SHAPE_COLUMNS_SINCE_V6: tuple[str, ...] = ("group_size",)
TIMING_COLUMNS: tuple[str, ...] = ("median_us", "p10_us", "p90_us", "repeats")
#: Columns in the order they are written.
COLUMNS: tuple[str, ...] = (
    ("op",) + SHAPE_COLUMNS + ("dtype",) + TIMING_COLUMNS + ("flops", "bytes", "status", "backend")
)

#: Row status: measured, or skipped with the reason (the run goes on).
STATUS_OK = "ok"
STATUS_SKIPPED_OOM = "skipped_oom"
STATUS_SKIPPED_UNSUPPORTED = "skipped_unsupported"
#: a whole-decoder row whose passes kept disagreeing (schema v6): left out of every fit
STATUS_SKIPPED_NOISY = "skipped_noisy"
STATUSES = (STATUS_OK, STATUS_SKIPPED_OOM, STATUS_SKIPPED_UNSUPPORTED, STATUS_SKIPPED_NOISY)

DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}

Shape = Mapping[str, "np.ndarray | int | float"]


def _f(x: "np.ndarray | int | float") -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# --- cost formulas (FLOPs and bytes moved at speed of light, one call of the op) ---------

def _gemm_flops(s: Shape) -> np.ndarray:
    return 2.0 * _f(s["m"]) * _f(s["n"]) * _f(s["k"])


def _gemm_bytes(s: Shape, e: int) -> np.ndarray:
    m, n, k = _f(s["m"]), _f(s["n"]), _f(s["k"])
    return e * (m * k + n * k + m * n)


def _gemm24_flops(s: Shape) -> np.ndarray:
    # Useful FLOPs: half the weights are zero and skipped by the sparse tensor cores.
    return _f(s["m"]) * _f(s["n"]) * _f(s["k"])


def _gemm24_bytes(s: Shape, e: int) -> np.ndarray:
    m, n, k = _f(s["m"]), _f(s["n"]), _f(s["k"])
    # Half the weight values plus 2-bit indices per kept value (1/8 byte per dense element).
    return e * (m * k + m * n) + n * k * (e / 2.0 + 1.0 / 8.0)


def _gemm_w8_bytes(s: Shape, e: int) -> np.ndarray:
    m, n, k = _f(s["m"]), _f(s["n"]), _f(s["k"])
    return e * (m * k + m * n) + n * k + 4.0 * n  # int8 weights, an fp32 scale per channel


def _gemm_w4_bytes(s: Shape, e: int) -> np.ndarray:
    m, n, k = _f(s["m"]), _f(s["n"]), _f(s["k"])
    groups = np.ceil(k / np.maximum(_f(s["group_size"]), 1.0))
    return e * (m * k + m * n) + n * k / 2.0 + 4.0 * n * groups  # nibbles, a scale and zero per group


def _gemm_fp8_bytes(s: Shape, e: int) -> np.ndarray:
    m, n, k = _f(s["m"]), _f(s["n"]), _f(s["k"])
    return e * m * k + m * k + n * k + e * m * n + 4.0 * (m + n)  # x read and cast, fp8 operands, scales


def _attended_pairs(s: Shape) -> np.ndarray:
    q, kv = _f(s["q_len"]), _f(s["kv_len"])
    causal = _f(s.get("causal", 0)) > 0
    # Causal: query i (of the last q positions) sees kv - q + i + 1 keys.
    tri = q * kv - q * (q - 1.0) / 2.0
    return np.where(causal, tri, q * kv)


def _attn_flops(s: Shape) -> np.ndarray:
    # QK^T and PV: 2 GEMMs of 2 FLOPs per multiply-add over every attended pair.
    return 4.0 * _f(s["batch"]) * _f(s["heads"]) * _f(s["head_dim"]) * _attended_pairs(s)


def _attn_bytes(s: Shape, e: int) -> np.ndarray:
    b, d = _f(s["batch"]), _f(s["head_dim"])
    q_elems = 2.0 * b * _f(s["q_len"]) * _f(s["heads"]) * d  # read Q, write O
    kv_elems = 2.0 * b * _f(s["kv_len"]) * _f(s["kv_heads"]) * d  # read K and V once
    return e * (q_elems + kv_elems)


def _numel(s: Shape) -> np.ndarray:
    return _f(s["numel"])


def _topk_flops(s: Shape) -> np.ndarray:
    return _f(s["m"]) * _f(s["n"]) * np.log2(np.maximum(_f(s["k"]), 2.0))


def _decoder_dims(s: Shape) -> tuple[np.ndarray, ...]:
    tokens = _f(s["batch"]) * _f(s["q_len"])
    hidden, ffn, hd = _f(s["hidden"]), _f(s["ffn"]), _f(s["head_dim"])
    weights = hidden * hd * (2.0 * _f(s["heads"]) + 2.0 * _f(s["kv_heads"])) + 3.0 * hidden * ffn
    return tokens, weights, _f(s["layers"])


def _decoder_flops(s: Shape) -> np.ndarray:
    tokens, weights, layers = _decoder_dims(s)
    return layers * (2.0 * tokens * weights + _attn_flops(s))


def _decoder_bytes(s: Shape, e: int) -> np.ndarray:
    # Weights once per layer, the attention's Q/K/V/O, and the residual stream in and out.
    tokens, weights, layers = _decoder_dims(s)
    return layers * (e * weights + _attn_bytes(s, e) + 2.0 * e * tokens * _f(s["hidden"]))


_ATTN_COLUMNS = ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal")
_DECODER_COLUMNS = _ATTN_COLUMNS + ("hidden", "ffn", "layers")


def _kept(s: Shape) -> np.ndarray:
    return 1.0 - _f(s["sparsity_pct"]) / 100.0


def _sparse_attn_flops(s: Shape) -> np.ndarray:
    return _kept(s) * _attn_flops(s)


def _sparse_attn_bytes(s: Shape, e: int) -> np.ndarray:
    b, d = _f(s["batch"]), _f(s["head_dim"])
    q_elems = 2.0 * b * _f(s["q_len"]) * _f(s["heads"]) * d
    kv_elems = 2.0 * b * _f(s["kv_len"]) * _f(s["kv_heads"]) * d * _kept(s)  # skipped tiles load nothing
    return e * (q_elems + kv_elems)
#: Whole routed decoders (schema v3), one op per dynamic family: each family's executor loops,
#: gathers and scatters in ways whose in-model cost no dense decoder shows.
ROUTED_DECODER_OPS: dict[str, str] = {
    "dynamic-depth": "dynamic_depth_decoder",
    "sparse-attention": "sparse_attention_decoder",
    "dynamic-width": "dynamic_width_decoder",
}


def _zero(s: Shape) -> np.ndarray:
    return np.zeros(np.broadcast(*[np.asarray(v) for v in s.values()]).shape) if s else np.zeros(())


@dataclass(frozen=True)
class OpKind:
    """One op a profile can measure and a simulation can execute."""

    name: str
    columns: tuple[str, ...]
    description: str
    flops: Callable[[Shape], np.ndarray]
    #: bytes moved at speed of light, given the element size in bytes
    bytes: Callable[[Shape, int], np.ndarray]
    #: True when the op needs a CUDA sm80+ device (skipped elsewhere, not an error)
    cuda_only: bool = False
    #: the op's peak FLOP rate over the profile's (fp8 tensor cores run twice bf16's)
    peak_scale: float = 1.0


def _mem(factor: float) -> Callable[[Shape, int], np.ndarray]:
    return lambda s, e: factor * e * _numel(s)


OPS: dict[str, OpKind] = {
    op.name: op
    for op in (
        OpKind("gemm", ("m", "n", "k"),
               "dense y = x @ W.T as nn.Linear runs it; x is m x k, W is n x k",
               _gemm_flops, _gemm_bytes),
        OpKind("gemm_2to4", ("m", "n", "k"),
               "2:4 semi-structured sparse weight W (n x k, dense K) times dense x",
               _gemm24_flops, _gemm24_bytes, cuda_only=True),
        OpKind("attn_prefill", ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal"),
               "scaled_dot_product_attention over a prompt (GQA: heads query heads share kv_heads)",
               _attn_flops, _attn_bytes),
        OpKind("attn_decode", ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal"),
               "scaled_dot_product_attention of q_len new tokens against a KV cache of kv_len",
               _attn_flops, _attn_bytes),
        OpKind("rmsnorm", ("numel",), "RMSNorm over rows of the hidden size (numel = rows x hidden), "
               "as Hugging Face computes it (v1 profiles: fused F.rms_norm)",
               lambda s: 4.0 * _numel(s), _mem(2.0)),
        OpKind("silu_mul", ("numel",), "silu(gate) * up, numel output elements",
               lambda s: 5.0 * _numel(s), _mem(3.0)),
        OpKind("rope", ("numel",), "rotary embedding applied to numel elements of q or k",
               lambda s: 3.0 * _numel(s), _mem(3.0)),
        OpKind("add", ("numel",), "residual add of two tensors of numel elements",
               _numel, _mem(3.0)),
        OpKind("gather", ("numel",), "index_select of rows, numel elements gathered",
               _zero, _mem(2.0)),
        OpKind("scatter_add", ("numel",), "index_add_ of numel elements into a residual stream",
               _numel, _mem(3.0)),
        OpKind("kv_concat", ("numel",), "torch.cat of a KV cache (numel elements) and one new token "
               "into a new tensor, as a DynamicCache appends", _zero, _mem(2.0)),
        OpKind("topk", ("m", "n", "k"), "torch.topk of k out of n along the last dim, m rows",
               _topk_flops, lambda s, e: e * _f(s["m"]) * _f(s["n"])),
        OpKind("dense_decoder", _DECODER_COLUMNS,
               "a whole dense decoder (no LM head) run end to end by Hugging Face transformers: "
               "prefill (causal = 1) or one decode step with a DynamicCache of kv_len (causal = 0); "
               "the in-model check of the op sum for --kv-cache concat (see simulator/inmodel/)",
               _decoder_flops, _decoder_bytes),
        OpKind("dense_decoder_prealloc", _DECODER_COLUMNS,
               "the same decoder run by pis's plain-PyTorch reference decoder, decode writing into "
               "a preallocated KV cache in place: the in-model check for --kv-cache preallocated",
               _decoder_flops, _decoder_bytes),
        *(OpKind(op, _DECODER_COLUMNS + ("sparsity_pct",),
                 f"a whole {family} decoder (no LM head) run end to end by pis's reference decoder at "
                 f"sparsity sparsity_pct / 100, decode writing a preallocated cache in place: that "
                 f"family's own in-model check (its loops and gathers do what no dense decoder does)",
                 _decoder_flops, _decoder_bytes)
          for family, op in ROUTED_DECODER_OPS.items()),
        OpKind("decoder_framework", _DECODER_COLUMNS,
               "the Hugging Face decoder of dense_decoder at a negligible width (hidden 64), prefill "
               "or one decode step: what its framework costs per step (Python modules, mask and "
               "cache handling, dispatch) apart from its ops' work; timed at several depths (schema v4)",
               _decoder_flops, _decoder_bytes),
        OpKind("overhead", (), "an empty kernel launch / per-dispatch overhead",
               _zero, lambda s, e: _zero(s)),
        OpKind("host_glue", (), "host time per dispatch of an eager loop's glue (views, slices, "
               "small index tensors, index_select): the loop glue a Python loop adds between kernels",
               _zero, lambda s, e: _zero(s)),
        # Schema v5: the kernels graph execution runs (the study's PruningInferSim), and a fill.
        OpKind("fill", ("numel",), "zero-fill of numel elements (a masked GEMM's output before its tiles run)",
               _zero, _mem(1.0)),
        OpKind("rmsnorm_fused", ("numel",), "RMSNorm as one fused kernel (Liger's Triton kernel where "
               "installed, else torch's F.rms_norm), numel = rows x hidden",
               lambda s: 4.0 * _numel(s), _mem(2.0), cuda_only=True),
        OpKind("rope_fused", ("numel",), "rotary embedding of q and k in one kernel, numel = their "
               "elements together", lambda s: 3.0 * _numel(s), _mem(3.0), cuda_only=True),
        OpKind("kv_write", ("numel",), "one token's K or V (numel elements) written into its slot of "
               "a preallocated cache in place", _zero, _mem(2.0), cuda_only=True),
        OpKind("attn_block_sparse", _ATTN_COLUMNS + ("sparsity_pct",),
               "tile-skipping block-sparse attention (FlexAttention block mask, 64-key blocks, a "
               "random mask per KV head): a fraction sparsity_pct / 100 of the key blocks is skipped "
               "and loads nothing; causal = 1 a prompt, 0 one decode step over the cache",
               _sparse_attn_flops, _sparse_attn_bytes, cuda_only=True),
        OpKind("gemm_2to4_graph", ("m", "n", "k"), "gemm_2to4 as cuSPARSELt runs it inside a CUDA "
               "graph (its algorithm searched once): kernel time, no host work",
               _gemm24_flops, _gemm24_bytes, cuda_only=True),
        # Schema v6: GEMMs with quantized weights (the weight formats of --weights).
        OpKind("gemm_w8", ("m", "n", "k"), "x (the activation dtype) times int8 weights with one scale per "
               "output channel, weight-only (torch._weight_int8pack_mm)", _gemm_flops, _gemm_w8_bytes),
        OpKind("gemm_w4", ("m", "n", "k", "group_size"), "x times 4-bit weights with a scale and zero per "
               "group of group_size along K, weight-only (torch._weight_int4pack_mm and its CPU twin: the "
               "kernels gpt-fast and torchao run)", _gemm_flops, _gemm_w4_bytes),
        OpKind("gemm_fp8", ("m", "n", "k"), "fp8 (e4m3) activations scaled per token on the fly times fp8 "
               "weights scaled per channel (torch._scaled_mm), cast included", _gemm_flops, _gemm_fp8_bytes,
               cuda_only=True, peak_scale=2.0),
        OpKind("dense_decoder_graph", _DECODER_COLUMNS,
               "the dense decoder (no LM head) captured in one CUDA graph and replayed, as the "
               "study's framework runs it: Hugging Face with a static cache written in place, Liger's "
               "RMSNorm where installed; the in-model check of graph execution",
               _decoder_flops, _decoder_bytes, cuda_only=True),
    )
}

#: Memory-bound ops: their latency depends on the element count alone.
MEMORY_OPS: tuple[str, ...] = tuple(name for name, op in OPS.items() if op.columns == ("numel",))

#: Whole-decoder ops: not executed by a simulation, they calibrate its in-model factor
#: (``dense_decoder`` for --kv-cache concat, ``dense_decoder_prealloc`` for preallocated).
DECODER_OPS: tuple[str, ...] = ("dense_decoder", "dense_decoder_prealloc")
#: The Hugging Face decoder at a negligible width: its framework cost per step (schema v4).
FRAMEWORK_OP = "decoder_framework"
#: The dense decoder replayed as one CUDA graph: graph execution's in-model check (schema v5).
GRAPH_DECODER_OP = "dense_decoder_graph"
#: Every whole-decoder op, dense and routed: measured for the in-model correction, never executed.
WHOLE_DECODER_OPS: tuple[str, ...] = (DECODER_OPS + tuple(ROUTED_DECODER_OPS.values()) + (FRAMEWORK_OP,)
                                      + (GRAPH_DECODER_OP,))
#: Ops only graph execution runs: CUDA grids time them, CPU grids do not.
GRAPH_OPS: tuple[str, ...] = ("rmsnorm_fused", "rope_fused", "kv_write", "attn_block_sparse", "gemm_2to4_graph",
                              GRAPH_DECODER_OP)

#: Ops every simulation of a dense or pruned decoder needs (2:4 and routing ops are per family).
REQUIRED_OPS: tuple[str, ...] = ("gemm", "attn_prefill", "attn_decode", "rmsnorm", "silu_mul",
                                 "rope", "add", "gather", "overhead")


def op_kind(name: str) -> OpKind:
    """Return the op definition, or raise KeyError naming the known ops."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(OPS)}") from None


def op_flops(op: str, shape: Shape) -> np.ndarray:
    """FLOPs of one call of ``op`` with ``shape`` (vectorized)."""
    return op_kind(op).flops(shape)


def op_bytes(op: str, shape: Shape, dtype: str) -> np.ndarray:
    """Bytes moved by one call of ``op`` at speed of light (vectorized)."""
    return op_kind(op).bytes(shape, DTYPE_BYTES[dtype])


# --- file metadata --------------------------------------------------------------------

#: Parquet key-value metadata keys; every value is a JSON-encoded string.
META_PREFIX = "pis."
META_REQUIRED: tuple[str, ...] = (
    "schema_version", "device_name", "device_kind", "dtype", "timing_method",
    "grid_name", "created", "tool_version",
)
META_OPTIONAL: tuple[str, ...] = (
    "compute_capability", "sm_count", "memory_bytes", "peak_flops", "peak_bandwidth",
    "peak_source", "torch_version", "cuda_version", "driver_version", "cpu_threads",
    "cpu_model", "grid_params", "complete", "model_shapes", "duration_s", "notes", "decoder_passes", "machine_noise",
)
#: Metadata keys renamed since they were first written: old name -> current name. Readers
#: migrate them (:func:`pis.profiles.store.read_profile`).
META_RENAMED: dict[str, str] = {"context_passes": "decoder_passes"}

#: The GEMM op of each quantized weight format (a dense GEMM with native weights is ``gemm``).
QUANTIZED_GEMM: dict[str, str] = {"fp8": "gemm_fp8", "int8": "gemm_w8", "int4": "gemm_w4"}
