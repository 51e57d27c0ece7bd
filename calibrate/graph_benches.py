"""Benches of the kernels graph execution runs (the study's PruningInferSim), and of a zero-fill.

Each returns a :class:`~pis.calibrate.ops.Bench` whose call the CUDA timer captures in a graph and
replays, as every CUDA op is timed. Where a well-kept library provides the kernel the study runs,
it is used: Liger's Triton RMSNorm and RoPE (``liger-kernel``, when installed; else torch's own
``F.rms_norm`` and the rotate-half RoPE, whose kernels follow each other in the graph),
FlexAttention's block masks for tile-skipping block-sparse attention, cuSPARSELt through torch
for 2:4 with its algorithm searched once. A kernel this device or torch cannot run raises
:class:`~pis.errors.Unsupported` (calibration records the point as skipped and goes on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pis.calibrate.device import cuda_capability
from pis.calibrate.ops import Bench, Shape, backend_prefix, build_rope, rand_tensor, row_split
from pis.errors import Unsupported
from pis.executors.base import mask_2to4

#: Head dim assumed for the fused RoPE's q and k.
ROPE_DIM = 128
#: Key-block size of the block-sparse attention (the study's 64-key tiles); query blocks of 128.
KEY_BLOCK, QUERY_BLOCK = 64, 128


def build_fill(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """``out.zero_()`` over numel elements: a masked GEMM's output before its tiles run."""
    out = torch.empty(int(s["numel"]), dtype=dtype, device=device)
    return Bench(out.zero_, backend_prefix(device) + "zero_")


def _liger(module: str, name: str):
    try:
        mod = __import__(f"liger_kernel.ops.{module}", fromlist=[name])
        return getattr(mod, name)
    except (ImportError, AttributeError):
        return None


def build_rmsnorm_fused(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """RMSNorm as one kernel: Liger's where installed (CUDA), else ``F.rms_norm``."""
    rows, width = row_split(s["numel"])
    x = rand_tensor(rows, width, dtype=dtype, device=device)
    weight = rand_tensor(width, dtype=dtype, device=device)
    liger = _liger("rms_norm", "LigerRMSNormFunction") if device.type == "cuda" else None
    if liger is not None:
        return Bench(lambda: liger.apply(x, weight, 1e-6), "liger-rmsnorm")
    if not hasattr(F, "rms_norm"):
        raise Unsupported(f"torch {torch.__version__} lacks F.rms_norm and liger-kernel is not installed")
    return Bench(lambda: F.rms_norm(x, (width,), weight, 1e-6), backend_prefix(device) + "F.rms_norm")


def build_rope_fused(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """Rotary embedding of q and k together (numel = their elements): Liger's one Triton kernel
    where installed (CUDA), else Hugging Face's rotate-half on each."""
    numel = int(s["numel"])
    liger = _liger("rope", "LigerRopeFunction") if device.type == "cuda" else None
    d = math.gcd(numel, ROPE_DIM)
    tokens = max(1, numel // (d * 40))  # 32 query heads and 8 KV heads of d per token
    if liger is None or numel % (d * 40):
        bench = build_rope(s, dtype, device)
        return Bench(bench.fn, bench.backend + "-unfused")
    q = rand_tensor(1, 32, tokens, d, dtype=dtype, device=device)
    k = rand_tensor(1, 8, tokens, d, dtype=dtype, device=device)
    cos = rand_tensor(1, tokens, d, dtype=dtype, device=device)
    sin = rand_tensor(1, tokens, d, dtype=dtype, device=device)
    return Bench(lambda: liger.apply(q, k, cos, sin), "liger-rope")


def build_kv_write(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """One token's K or V (numel elements: batch x kv heads x head_dim) written into its slot of a
    preallocated cache in place, as a static cache updates."""
    numel = int(s["numel"])
    d = math.gcd(numel, 128)
    rows = numel // d
    cache = torch.zeros(rows, 64, d, dtype=dtype, device=device)
    new = rand_tensor(rows, 1, d, dtype=dtype, device=device)
    pos = torch.tensor([17], device=device)
    return Bench(lambda: cache.index_copy_(1, pos, new), backend_prefix(device) + "index_copy_")


def build_attn_block_sparse(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """Tile-skipping block-sparse attention with FlexAttention: a random block mask per (batch,
    KV head) keeps (1 − sparsity) of the 64-key blocks of every 128-query block (causal in a
    prompt); a skipped tile loads nothing."""
    if device.type != "cuda":
        raise Unsupported("block-sparse attention (FlexAttention) is timed on CUDA only")
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        raise Unsupported(f"torch {torch.__version__} lacks FlexAttention") from err
    b, h, g, d = int(s["batch"]), int(s["heads"]), int(s["kv_heads"]), int(s["head_dim"])
    q_len, kv_len, causal = int(s["q_len"]), int(s["kv_len"]), bool(s["causal"])
    keep = 1.0 - int(s["sparsity_pct"]) / 100.0
    q = rand_tensor(b, h, q_len, d, dtype=dtype, device=device)
    k = rand_tensor(b, g, kv_len, d, dtype=dtype, device=device)
    v = rand_tensor(b, g, kv_len, d, dtype=dtype, device=device)
    nq, nk = math.ceil(q_len / QUERY_BLOCK), math.ceil(kv_len / KEY_BLOCK)
    gen = torch.Generator(device="cpu").manual_seed(0)
    kept = (torch.rand(b, g, nq, nk, generator=gen) < keep).to(device)
    kept[..., 0] = True  # every query block keeps a block: no row of the softmax is empty
    group = h // g
    offset = kv_len - q_len  # decode: the query is the last position

    def mask_mod(bi, hi, qi, ki):
        ok = kept[bi, hi // group, qi // QUERY_BLOCK, ki // KEY_BLOCK]
        return ok & (qi + offset >= ki) if causal else ok

    try:
        block_mask = create_block_mask(mask_mod, b, h, q_len, kv_len, device=device,
                                       BLOCK_SIZE=(QUERY_BLOCK, KEY_BLOCK))
        attend = _compiled(flex_attention)
        attend(q, k, v, block_mask=block_mask, enable_gqa=g != h)
    except Exception as err:  # noqa: BLE001 - compilers fail in many ways; the point is skipped
        raise Unsupported(f"FlexAttention: {' '.join(str(err).split())[:120]}") from err
    return Bench(lambda: attend(q, k, v, block_mask=block_mask, enable_gqa=g != h), "flex-attention")


_COMPILED: dict = {}


def _compiled(fn):
    """One compiled FlexAttention per process, allowed a recompile per grid shape (beyond
    dynamo's default cache of eight, a shape would fall back to the slow eager kernel)."""
    if fn not in _COMPILED:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED[fn] = torch.compile(fn, dynamic=False)
    return _COMPILED[fn]


def build_gemm_2to4_graph(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """A 2:4 GEMM through cuSPARSELt with its algorithm and split-k searched once for this shape,
    as the study's framework runs it inside its graph (the input padded to a multiple of 16 rows)."""
    cap = cuda_capability(device)
    if cap is None or cap < (8, 0) or dtype == torch.float32:
        raise Unsupported("2:4 sparse tensor cores need a CUDA sm80+ GPU and half precision")
    if not all(hasattr(torch, f) for f in ("_cslt_compress", "_cslt_sparse_mm", "_cslt_sparse_mm_search")):
        raise Unsupported(f"torch {torch.__version__} lacks cuSPARSELt")
    m = max(16, -(-int(s["m"]) // 16) * 16)
    x = rand_tensor(m, int(s["k"]), dtype=dtype, device=device)
    try:
        w = torch._cslt_compress(mask_2to4(rand_tensor(int(s["n"]), int(s["k"]), dtype=dtype, device=device)))
        found = torch._cslt_sparse_mm_search(w, x.t())
        alg, split = (found[0], found[1]) if isinstance(found, tuple) else (found, 1)
        torch._cslt_sparse_mm(w, x.t(), alg_id=alg, split_k=split)
    except (RuntimeError, TypeError) as err:
        raise Unsupported(f"cuSPARSELt: {' '.join(str(err).split())[:120]}") from err
    return Bench(lambda: torch._cslt_sparse_mm(w, x.t(), alg_id=alg, split_k=split), "cusparselt-searched")
