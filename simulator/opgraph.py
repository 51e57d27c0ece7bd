"""Building blocks of the decoder op graph: one attention sublayer, one MLP sublayer, the ends.

Every block returns :class:`OpGroup` s whose shapes are numpy arrays over the design points, so
one call describes every layer that shares a configuration (``count`` says how many). Families
in :mod:`pis.simulator.pruning` compose these blocks with pruned dimensions; FAMILIES.md is the
spec both this module and ``pis-validate`` follow.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pis.simulator.dispatch import GLUE_OP
from pis.models import ModelSpec
from pis.simulator.points import OpGroup, Points

Arr = "np.ndarray | int | float"
#: Turns one linear layer (name, M, N, K, count) into the op groups that execute it: a dense
#: GEMM by default; 2:4, low-rank and masked variants are other Projectors.
Projector = Callable[[str, "np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"], list[OpGroup]]


def _i(x: Arr) -> np.ndarray:
    # Shapes of ops whose count is zero still get predicted; keep them valid (>= 1).
    return np.maximum(np.asarray(x, dtype=np.int64), 1)


#: Breakdown category of the decoder's GEMMs (routers' GEMMs are ``routing``).
GEMM_CATEGORY = "gemm"


def gemm(name: str, m: Arr, n: Arr, k: Arr, count: Arr, op: str = "gemm",
         category: str = GEMM_CATEGORY, work_scale: Arr = 1.0) -> OpGroup:
    """``count`` GEMMs ``y[m×n] = x[m×k] · Wᵀ``."""
    return OpGroup(name, op, {"m": _i(m), "n": _i(n), "k": _i(k)}, count, category,
                   np.asarray(work_scale, dtype=np.float64))


def memop(name: str, op: str, numel: Arr, count: Arr, category: str) -> OpGroup:
    """``count`` calls of a memory-bound op over ``numel`` elements."""
    return OpGroup(name, op, {"numel": _i(numel)}, count, category)


def topk(name: str, m: Arr, n: Arr, k: Arr, count: Arr) -> OpGroup:
    """``count`` top-k selections of ``k`` of ``n`` in each of ``m`` rows."""
    return OpGroup(name, "topk", {"m": _i(m), "n": _i(n), "k": _i(np.minimum(k, n))}, count, "routing")


def loop_glue(name: str, dispatches_per_call: Arr, count: Arr) -> OpGroup:
    """``count`` stretches of loop glue: host-only dispatches with no kernel of their own (a
    Python loop's indexing, views and index tensors), ``dispatches_per_call`` each, no device time."""
    return OpGroup(name, GLUE_OP, {}, count, "glue", dispatches=np.asarray(dispatches_per_call, dtype=np.float64))


def attention(name: str, pts: Points, count: Arr, *, batch: Arr, q_len: Arr, kv_len: Arr,
              heads: Arr, kv_heads: Arr, head_dim: int) -> OpGroup:
    """``count`` scaled-dot-product attentions (causal in prefill, cached keys in decode)."""
    causal = 1 if pts.phase == "prefill" else 0
    shape = {"batch": _i(batch), "q_len": _i(q_len), "kv_len": _i(kv_len), "heads": _i(heads),
             "kv_heads": _i(kv_heads), "head_dim": np.int64(head_dim), "causal": np.int64(causal)}
    return OpGroup(name, pts.attn_op, shape, count, "attention")


def dense_projector(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray,
                    count: np.ndarray) -> list[OpGroup]:
    """A linear layer as one dense GEMM (what ``nn.Linear`` runs)."""
    return [gemm(name, m, n, k, count)]


def norm(name: str, numel: Arr, count: Arr, graph: bool = False) -> OpGroup:
    """``count`` RMSNorms over ``numel`` elements: Hugging Face's unfused one in eager execution,
    one fused kernel in graph execution (Liger's, as the study's framework patches in)."""
    return memop(name, "rmsnorm_fused" if graph else "rmsnorm", numel, count, "norm")


def rope(q_numel: Arr, k_numel: Arr, count: Arr, graph: bool = False) -> list[OpGroup]:
    """Rotary embedding of q and k: Hugging Face's rotate-half per tensor in eager execution,
    one fused kernel for both in graph execution (the study's Triton kernel)."""
    if graph:
        return [memop("rope", "rope_fused", np.asarray(q_numel) + np.asarray(k_numel), count, "elementwise")]
    return [memop("rope_q", "rope", q_numel, count, "elementwise"),
            memop("rope_k", "rope", k_numel, count, "elementwise")]


def attention_block(spec: ModelSpec, pts: Points, count: Arr, *, tokens: Arr | None = None,
                    hidden: Arr | None = None, heads: Arr | None = None, kv_heads: Arr | None = None,
                    attn_batch: Arr | None = None, q_len: Arr | None = None,
                    kv_len: Arr | None = None, proj: Projector = dense_projector,
                    residual: str = "add", graph: bool = False, attn_op: str | None = None,
                    attn_extra: dict | None = None) -> list[OpGroup]:
    """One attention sublayer: norm, q/k/v, RoPE, attention, o, residual.

    ``tokens`` rows run the projections (default: every token); ``heads`` query heads and
    ``kv_heads`` K/V heads remain (default: all); ``residual`` is ``add`` or ``scatter_add``
    (routed tokens); ``graph`` picks graph execution's fused kernels (:func:`norm`, :func:`rope`);
    ``attn_op`` replaces the attention kernel (block-sparse), ``attn_extra`` adds shape columns.
    """
    t = pts.tokens if tokens is None else np.asarray(tokens)
    d_model = spec.hidden if hidden is None else np.asarray(hidden)
    h = spec.heads if heads is None else np.asarray(heads)
    g = spec.kv_heads if kv_heads is None else np.asarray(kv_heads)
    hd = spec.head_dim
    c = np.asarray(count, dtype=np.float64)
    ops = [norm("input_norm", t * d_model, c, graph)]
    if spec.fused_qkv:
        ops += proj("qkv_proj", t, (h + 2 * g) * hd, d_model, c)
    else:
        ops += proj("q_proj", t, h * hd, d_model, c)
        ops += proj("k_proj", t, np.int64(g * hd) if np.ndim(g) == 0 else g * hd, d_model, c)
        ops += proj("v_proj", t, np.int64(g * hd) if np.ndim(g) == 0 else g * hd, d_model, c)
    ops += rope(t * h * hd, t * g * hd, c, graph)
    attn = attention("attention", pts, c, batch=pts.batch if attn_batch is None else attn_batch,
                     q_len=pts.q_len if q_len is None else q_len, kv_len=pts.kv_len if kv_len is None else kv_len,
                     heads=h, kv_heads=g, head_dim=hd)
    if attn_op is not None:
        attn = OpGroup(attn.name, attn_op, {**attn.shape, **(attn_extra or {})}, attn.count, attn.category)
    ops.append(attn)
    ops += proj("o_proj", t, d_model, h * hd, c)
    ops.append(memop("attn_residual", residual, t * d_model, c,
                     "elementwise" if residual == "add" else "routing"))
    return ops


def mlp_block(spec: ModelSpec, pts: Points, count: Arr, *, tokens: Arr | None = None,
              hidden: Arr | None = None, ffn: Arr | None = None,
              proj: Projector = dense_projector, residual: str = "add", graph: bool = False) -> list[OpGroup]:
    """One gated MLP sublayer: norm, gate/up, SiLU-and-multiply, down, residual."""
    t = pts.tokens if tokens is None else np.asarray(tokens)
    d_model = spec.hidden if hidden is None else np.asarray(hidden)
    f = spec.ffn if ffn is None else np.asarray(ffn)
    c = np.asarray(count, dtype=np.float64)
    ops = [norm("post_attn_norm", t * d_model, c, graph)]
    if spec.fused_gate_up:
        ops += proj("gate_up_proj", t, 2 * f, d_model, c)
    else:
        ops += proj("gate_proj", t, f, d_model, c)
        ops += proj("up_proj", t, f, d_model, c)
    ops.append(memop("silu_mul", "silu_mul", t * f, c, "elementwise"))
    ops += proj("down_proj", t, d_model, f, c)
    ops.append(memop("mlp_residual", residual, t * d_model, c,
                     "elementwise" if residual == "add" else "routing"))
    return ops


#: Name of the LM head's op group: the one op of a model that whole-decoder rows never time.
LM_HEAD = "lm_head"


def ends(spec: ModelSpec, pts: Points, hidden: Arr | None = None, graph: bool = False) -> list[OpGroup]:
    """Embedding lookup, final norm and lm_head. In prefill the head runs on the last token of
    each sequence in eager execution (Hugging Face's ``generate``), on every prompt token in
    graph execution (the study's framework keeps every logit)."""
    d_model = spec.hidden if hidden is None else np.asarray(hidden)
    t = pts.tokens
    head_rows = t if graph else pts.batch
    return [memop("embedding", "gather", t * d_model, 1.0, "embedding"),
            norm("final_norm", t * d_model, 1.0, graph),
            gemm(LM_HEAD, head_rows, np.int64(spec.vocab), d_model, 1.0)]
