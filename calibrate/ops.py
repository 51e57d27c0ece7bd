"""One builder per op kind of :data:`pis.profiles.schema.OPS`: (shape, dtype, device) -> callable.

Each builder allocates random inputs (never zeros: zeros can run faster than real data) and
returns a :class:`Bench` whose ``fn`` runs the op once, exactly as a Hugging Face decoder runs it,
with the same meaning of the shape columns as the schema:

* ``gemm(m, n, k)``: ``F.linear(x[m, k], W[n, k])``.
* ``gemm_2to4(m, n, k)``: the same with ``W`` pruned 2:4 and converted by
  ``torch.sparse.to_sparse_semi_structured`` (CUDA sm80+ only).
* ``attn_prefill`` / ``attn_decode``: ``F.scaled_dot_product_attention`` on
  ``q[batch, heads, q_len, d]``, ``k, v[batch, kv_heads, kv_len, d]`` with ``enable_gqa=True``
  (older torch: K/V are ``repeat_interleave``-d to ``heads``); decode is ``q_len`` new tokens
  against the KV cache, not causal.
* ``rmsnorm(numel)``: Hugging Face's LlamaRMSNorm formula over ``[numel / h, h]`` with ``h = gcd(numel, 4096)``:
  4096 (a typical hidden size) whenever it divides numel, else the largest power-of-two split.
* ``silu_mul(numel)``: ``F.silu(gate) * up``; ``add(numel)``: ``a + b``.
* ``rope(numel)``: HF ``q * cos + rotate_half(q) * sin`` on ``[tokens, heads, d]`` with
  ``d = 128`` (``cos``/``sin`` per token, broadcast over heads).
* ``gather(numel)``: ``index_select`` of ``numel / h`` random rows of width ``h`` from a table
  with twice as many rows; ``scatter_add(numel)``: ``index_add_`` of ``numel / h`` rows into a
  residual stream of twice as many rows (distinct indices, as kept tokens are).
* ``topk(m, n, k)``: ``torch.topk(x[m, n], k)``.
* ``kv_concat(numel)``: ``torch.cat([cache, new_token])`` copying numel cached elements.
* ``overhead``: wall time per call of a stream of tiny ops (one-element ``add``), i.e. the rate
  at which eager PyTorch issues ops; on CUDA this is the per-op launch floor.
* ``host_glue``: wall time per dispatch of the loop glue a routing loop issues between its
  kernels (view, transpose, unsqueeze, select, slice, reshape, an index tensor built from a
  Python list, a small ``index_select``), the mix pis's reference decoder's loops run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from pis.calibrate.device import cuda_capability
from pis.errors import Unsupported
from pis.executors.base import mask_2to4
from pis.profiles.schema import OPS

#: Hidden width assumed for the row-wise memory ops (rmsnorm, gather, scatter_add).
ROW_WIDTH = 4096
#: Head dim assumed for rope.
ROPE_DIM = 128
#: Row width of the kv_concat cache (one token of one KV head).
KV_ROW = 128
#: Tiny ops issued per sample of the overhead op.
OVERHEAD_INNER = 200
#: Rounds of the glue mix per sample of the host_glue op, and dispatches per round
#: (torch.tensor from a list is two: the tensor and its copy to the device).
GLUE_ROUNDS = 25
GLUE_OPS_PER_ROUND = 9


@dataclass
class Bench:
    """A ready-to-time op call."""

    fn: Callable[[], object]
    backend: str
    #: wall mode: ``fn`` issues ``inner`` calls, time per call = wall time / inner
    inner: int = 1
    wall: bool = False
    #: a whole-model bench that needs an untimed setup per repeat measures itself
    #: (the same discipline, see :func:`pis.calibrate.timing.measure_step`)
    timed: "Callable[[], tuple[float, float, float, int]] | None" = None
    #: False: never time CUDA-graph replays of it (its host work is part of its real cost)
    graphs: bool = True


Shape = Mapping[str, int]
Builder = Callable[[Shape, torch.dtype, torch.device], Bench]


def rand_tensor(*shape: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # uniform_ in place is much faster than randn on the CPU, and large weights dominate setup.
    return torch.empty(shape, dtype=dtype, device=device).uniform_(-1.0, 1.0)


def backend_prefix(device: torch.device) -> str:
    return "cpu-" if device.type == "cpu" else ""


def row_split(numel: int) -> tuple[int, int]:
    width = math.gcd(int(numel), ROW_WIDTH)
    return int(numel) // width, width


def _linear_backend(device: torch.device) -> str:
    return "cpu-linear" if device.type == "cpu" else "cublas"


#: The last GEMM weight, reused while consecutive points share (n, k): grids are ordered so
#: that M varies fastest, and filling a 1 GB weight costs more than timing it.
_weight_cache: dict[tuple, torch.Tensor] = {}


def clear_cache() -> None:
    """Drop cached tensors (before retrying after an out-of-memory error, and at the end)."""
    _weight_cache.clear()
    _pool.clear()
    _cursor.clear()


def _weight(n: int, k: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    key = (int(n), int(k), dtype, str(device))
    if key not in _weight_cache:
        _weight_cache.clear()
        _weight_cache[key] = rand_tensor(int(n), int(k), dtype=dtype, device=device)
    return _weight_cache[key]


#: CPU: GEMM weights are views into one random pool this large, rotated call by call. A real
#: decoder reads each layer's weights once per forward, so they arrive from DRAM, not from
#: the last-level cache a single reused weight would sit in (and run much faster from).
#: The GPU timer flushes L2 between repeats instead.
CPU_WEIGHT_POOL_BYTES = 1 << 30
_pool: dict[tuple, torch.Tensor] = {}
#: Where in each pool the next tensor set starts (elements), shared by all benches. A bench
#: goes on where the previous one stopped instead of at the pool's start: consecutive points of
#: one weight shape (the grid runs M fastest) would otherwise re-read the sets the previous
#: point just left in the last-level cache (a small weight's repeats span only a fraction of
#: it) and be stored below their cold time (cold, as inside a decoder).
_cursor: dict[tuple, int] = {}


def _cold_tensors(shapes: list[tuple[int, ...]], dtype: torch.dtype,
                  device: torch.device) -> Callable[[], list[torch.Tensor]]:
    """A function returning tensors of ``shapes`` that are views into the CPU pool, a new set
    on every call, so that each call reads memory that no call of this or an earlier bench
    touched within the last pool's worth of traffic."""
    key = (dtype, str(device))
    if key not in _pool:
        elems = CPU_WEIGHT_POOL_BYTES // torch.tensor([], dtype=dtype).element_size()
        _pool[key] = rand_tensor(elems, dtype=dtype, device=device)
    pool = _pool[key]
    sizes = [math.prod(sh) for sh in shapes]
    size = sum(sizes)
    copies = len(pool) // size
    if copies < 2:  # this much data streams from DRAM anyway: fixed tensors
        fixed = [rand_tensor(*sh, dtype=dtype, device=device) for sh in shapes]
        return lambda: fixed
    # At most 4096 precomputed sets (views cost time inside the timed call), spread over the
    # whole pool so that the rotation still sweeps all of it.
    stride = len(pool) // min(copies, 4096)
    bases = [i * stride for i in range(min(copies, 4096))]
    sets = []
    for base in bases:
        views = []
        for sh, n in zip(shapes, sizes):
            views.append(pool[base:base + n].view(sh))
            base += n
        sets.append(views)
    # Start where the previous bench stopped: the set just before the cursor is the first one
    # returned after the increment below.
    state = {"i": (_cursor.get(key, 0) // stride - 1) % len(sets)}

    def nxt() -> list[torch.Tensor]:
        state["i"] = i = (state["i"] + 1) % len(sets)
        _cursor[key] = bases[i] + stride
        return sets[i]
    return nxt


def _cold_weights(n: int, k: int, dtype: torch.dtype, device: torch.device) -> Callable[[], torch.Tensor]:
    if int(n) * int(k) * 2 > CPU_WEIGHT_POOL_BYTES // torch.tensor([], dtype=dtype).element_size():
        w = _weight(n, k, dtype, device)  # one weight this large streams from DRAM anyway
        return lambda: w
    nxt = _cold_tensors([(int(n), int(k))], dtype, device)
    return lambda: nxt()[0]


def build_gemm(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    x = rand_tensor(s["m"], s["k"], dtype=dtype, device=device)
    if device.type == "cpu":
        nxt = _cold_weights(s["n"], s["k"], dtype, device)
        return Bench(lambda: F.linear(x, nxt()), "cpu-linear-cold")
    w = _weight(s["n"], s["k"], dtype, device)
    return Bench(lambda: F.linear(x, w), _linear_backend(device))


def build_gemm_2to4(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    cap = cuda_capability(device)
    if cap is None or cap < (8, 0):
        raise Unsupported("2:4 sparse tensor cores need a CUDA sm80+ GPU")
    if dtype == torch.float32:
        raise Unsupported("2:4 sparse GEMM runs in half precision only")
    try:
        from torch.sparse import to_sparse_semi_structured
    except ImportError as err:
        raise Unsupported(f"torch {torch.__version__} lacks semi-structured sparsity") from err
    x = rand_tensor(s["m"], s["k"], dtype=dtype, device=device)
    try:
        w = to_sparse_semi_structured(mask_2to4(rand_tensor(s["n"], s["k"], dtype=dtype, device=device)))
        F.linear(x, w)
    except (RuntimeError, ValueError, NotImplementedError) as err:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        raise Unsupported(f"to_sparse_semi_structured: {str(err).splitlines()[0][:120]}") from err
    kind = type(w).__name__.lower()  # SparseSemiStructuredTensorCUSPARSELT / ...CUTLASS
    backend = next((b for b in ("cusparselt", "cutlass") if b in kind), "semi-structured")
    # Timed eagerly even when calibration replays CUDA graphs: eager PyTorch pays much host
    # work per semi-structured linear (the tensor subclass's Python dispatch and the cuSPARSELt
    # call), which a graph replay hides and the events of an eager call catch, so
    # graph-replayed 2:4 rows under-predict eager 2:4 decoders.
    return Bench(lambda: F.linear(x, w), f"2:4-{backend}", graphs=False)


_SDPA_NAMES = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}


def _sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, gqa: bool) -> str:
    """The fused kernel torch's dispatcher picks for these inputs (its own choice function)."""
    choice = getattr(torch, "_fused_sdp_choice", None)
    if choice is None:
        return "sdpa"
    try:
        kw = {"is_causal": causal, "enable_gqa": True} if gqa else {"is_causal": causal}
        return _SDPA_NAMES.get(int(choice(q, k, v, **kw)), "sdpa")
    except (RuntimeError, TypeError):
        return "sdpa"


def _supports_gqa() -> bool:
    try:
        import inspect

        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # builtin without a signature: probe it
        q = torch.ones(1, 2, 1, 8)
        try:
            F.scaled_dot_product_attention(q, q[:, :1], q[:, :1], enable_gqa=True)
            return True
        except TypeError:
            return False


def build_attention(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    b, h, g, d = s["batch"], s["heads"], s["kv_heads"], s["head_dim"]
    causal = bool(s["causal"])
    q = rand_tensor(b, h, s["q_len"], d, dtype=dtype, device=device)
    k = rand_tensor(b, g, s["kv_len"], d, dtype=dtype, device=device)
    v = rand_tensor(b, g, s["kv_len"], d, dtype=dtype, device=device)
    sdpa = F.scaled_dot_product_attention
    if device.type == "cpu" and not causal and h != g and _supports_gqa():
        # Decode reads a KV cache that other layers' work has pushed out of cache (a prefill's
        # K/V were just computed and are hot); the GPU timer flushes L2 instead.
        kv = _cold_tensors([tuple(k.shape), tuple(v.shape)], dtype, device)

        def fn() -> torch.Tensor:
            kc, vc = kv()
            return sdpa(q, kc, vc, is_causal=False, enable_gqa=True)

        return Bench(fn, backend_prefix(device) + _sdpa_backend(q, k, v, False, gqa=True) + "-cold-kv")
    if h == g:
        fn = lambda: sdpa(q, k, v, is_causal=causal)  # noqa: E731
        name = _sdpa_backend(q, k, v, causal, gqa=False)
    elif _supports_gqa():
        fn = lambda: sdpa(q, k, v, is_causal=causal, enable_gqa=True)  # noqa: E731
        name = _sdpa_backend(q, k, v, causal, gqa=True)
    else:
        rep = h // g

        def fn() -> torch.Tensor:
            return sdpa(q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=causal)

        name = _sdpa_backend(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), causal, False) + "+repeat_kv"
    return Bench(fn, backend_prefix(device) + name)


def build_rmsnorm(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    rows, width = row_split(s["numel"])
    x = rand_tensor(rows, width, dtype=dtype, device=device)
    weight = rand_tensor(width, dtype=dtype, device=device)

    def fn() -> torch.Tensor:
        # Hugging Face's LlamaRMSNorm, op for op (fp32 statistics, unfused): what models run.
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return weight * h.to(dtype)

    return Bench(fn, backend_prefix(device) + "hf-rmsnorm")


def build_silu_mul(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    gate = rand_tensor(s["numel"], dtype=dtype, device=device)
    up = rand_tensor(s["numel"], dtype=dtype, device=device)
    return Bench(lambda: F.silu(gate) * up, backend_prefix(device) + "eager")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def build_rope(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    numel = int(s["numel"])
    d = math.gcd(numel, ROPE_DIM)
    heads = math.gcd(numel // d, 32)
    tokens = numel // (d * heads)
    x = rand_tensor(tokens, heads, d, dtype=dtype, device=device)
    cos = rand_tensor(tokens, 1, d, dtype=dtype, device=device)
    sin = rand_tensor(tokens, 1, d, dtype=dtype, device=device)
    return Bench(lambda: x * cos + _rotate_half(x) * sin, backend_prefix(device) + "eager")


def build_add(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    a = rand_tensor(s["numel"], dtype=dtype, device=device)
    b = rand_tensor(s["numel"], dtype=dtype, device=device)
    return Bench(lambda: a + b, backend_prefix(device) + "eager")


def _indices(rows: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rows)
    return torch.randperm(2 * rows, generator=gen)[:rows].to(device)


def build_gather(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    rows, width = row_split(s["numel"])
    table = rand_tensor(2 * rows, width, dtype=dtype, device=device)
    idx = _indices(rows, device)
    return Bench(lambda: table.index_select(0, idx), backend_prefix(device) + "index_select")


def build_scatter_add(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    rows, width = row_split(s["numel"])
    residual = rand_tensor(2 * rows, width, dtype=dtype, device=device)
    src = rand_tensor(rows, width, dtype=dtype, device=device)
    idx = _indices(rows, device)
    return Bench(lambda: residual.index_add_(0, idx, src), backend_prefix(device) + "index_add_")


def build_kv_concat(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """``torch.cat([cache, new])`` along the sequence: a DynamicCache append copying numel
    cached elements into a new tensor. The cache is cold on CPU (a pool view per call), as a
    layer's cache is when its turn comes; the GPU timer flushes L2 instead.

    On CPU the copy lands in one preallocated tensor: the row is the copy alone. A fresh
    output above glibc's mmap threshold (32 MiB) would also fault in its pages, or not,
    depending on what the process freed before, and the row would swing with it; the
    simulator adds that cost where the real decoder pays it (first-touch pages,
    :data:`pis.allocator.FRESH_ALLOC_THRESHOLD`, :mod:`pis.simulator.inmodel.first_touch`)."""
    rows = max(1, int(s["numel"]) // KV_ROW)
    new = rand_tensor(1, KV_ROW, dtype=dtype, device=device)
    if device.type == "cpu":
        cache = _cold_tensors([(rows, KV_ROW)], dtype, device)
        out = torch.empty(rows + 1, KV_ROW, dtype=dtype, device=device)
        return Bench(lambda: torch.cat([cache()[0], new], out=out), backend_prefix(device) + "cat-cold-out")
    fixed = rand_tensor(rows, KV_ROW, dtype=dtype, device=device)
    return Bench(lambda: torch.cat([fixed, new]), "cat")


def build_topk(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    x = rand_tensor(s["m"], s["n"], dtype=dtype, device=device)
    k = int(s["k"])
    return Bench(lambda: torch.topk(x, k, dim=-1), backend_prefix(device) + "topk")


def build_overhead(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    a = rand_tensor(1, dtype=dtype, device=device)
    b = rand_tensor(1, dtype=dtype, device=device)
    out = torch.empty_like(a)

    def fn() -> None:
        for _ in range(OVERHEAD_INNER):
            torch.add(a, b, out=out)

    return Bench(fn, backend_prefix(device) + "eager-add", inner=OVERHEAD_INNER, wall=True)


def build_host_glue(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    x = rand_tensor(4, 8, 16, dtype=dtype, device=device)
    rows = [0, 2, 3]

    def fn() -> None:
        for _ in range(GLUE_ROUNDS):
            x.view(4, 128)
            x.transpose(1, 2)
            x.unsqueeze(0)
            x.select(0, 1)
            x[:, 2:6]
            x.reshape(32, 16)
            idx = torch.tensor(rows, dtype=torch.long, device=device)
            x.index_select(0, idx)

    return Bench(fn, backend_prefix(device) + "glue", inner=GLUE_ROUNDS * GLUE_OPS_PER_ROUND, wall=True)


#: Builders of the ops a simulation executes; the whole-decoder ops' builders are in
#: :mod:`pis.calibrate.decoder_benches`, and :func:`pis.calibrate.benches.build` finds either.
OP_BUILDERS: dict[str, Builder] = {
    "gemm": build_gemm,
    "gemm_2to4": build_gemm_2to4,
    "attn_prefill": build_attention,
    "attn_decode": build_attention,
    "rmsnorm": build_rmsnorm,
    "silu_mul": build_silu_mul,
    "rope": build_rope,
    "add": build_add,
    "gather": build_gather,
    "scatter_add": build_scatter_add,
    "topk": build_topk,
    "kv_concat": build_kv_concat,
    "overhead": build_overhead,
    "host_glue": build_host_glue,
}
