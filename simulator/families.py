"""Pruning families: pure functions from (model spec, design points, sparsity, options) to op groups.

Each family is one function building the ops of ``n`` decoder layers that share a sparsity,
registered in :data:`FAMILIES` with one line. Seven families have two op graphs: the study's
(PruningInferSim, arXiv 2606.09080) and pis's (what ``pis-validate``'s executors run), chosen per
family by :meth:`pis.pruned.PruneOptions.variant`. ``simulator/FAMILIES.md`` is the spec of both
and sets them side by side. At sparsity 0 every family and variant runs exactly the dense graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pis.models import ModelSpec
from pis.pruned import (PruneOptions, ceil_int, layers_removed, lowrank_rank, pruned_ffn, pruned_heads,
                        pruned_hidden, round_half_up, study_ffn, study_hidden, study_kv_heads, study_rank, study_sublayers_removed)
from pis.simulator.opgraph import (Projector, attention, attention_block, dense_projector, gemm, loop_glue, memop,
                                   mlp_block, norm, rope, topk)
from pis.simulator.points import OpGroup, Points

LayerFn = Callable[[ModelSpec, Points, np.ndarray, int, PruneOptions], list[OpGroup]]


# --- projectors: how one linear layer executes under a family -------------------------------

def _lowrank_projector(s: np.ndarray, rank: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Projector:
    def proj(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray, count: np.ndarray) -> list[OpGroup]:
        r = rank(n, k)
        lowrank = count * (s > 0)
        return [gemm(name, m, n, k, count * (s == 0)),
                gemm(f"{name}.A", m, r, k, lowrank),
                gemm(f"{name}.B", m, n, r, lowrank)]
    return proj


def _masked_projector(s: np.ndarray) -> Projector:
    def proj(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray, count: np.ndarray) -> list[OpGroup]:
        return [gemm(name, m, n, k, count, work_scale=1.0 - s)]
    return proj


def _split24_projector(sparse_share: np.ndarray, op: str) -> Projector:
    def proj(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray, count: np.ndarray) -> list[OpGroup]:
        return [gemm(name, m, n, k, count * (1.0 - sparse_share)),
                gemm(f"{name}.2:4", m, n, k, count * sparse_share, op=op)]
    return proj


def _layers(spec: ModelSpec, pts: Points, n: "int | np.ndarray", o: PruneOptions, proj: Projector = dense_projector,
            **kw) -> list[OpGroup]:
    c = np.broadcast_to(np.asarray(n, dtype=np.float64), (len(pts),)).copy()
    return (attention_block(spec, pts, c, proj=proj, graph=o.graph, **kw.get("attn", {}))
            + mlp_block(spec, pts, c, proj=proj, graph=o.graph, **kw.get("mlp", {})))


# --- families: ops of ``n`` layers at sparsity ``s`` ------------------------------------------

def dense(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """The unpruned decoder."""
    return _layers(spec, pts, n, o)


def static_depth(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static M. Study: int(s·L) attention and int(s·L) MLP sublayers go. pis: round(s·L)
    layers, or round(2s·L) sublayers with ``--granularity sublayer`` (attention first)."""
    if o.variant("static-depth") == "study":
        kept = (n - study_sublayers_removed(n, s)).astype(np.float64)
        attn_kept = mlp_kept = kept
    elif o.granularity == "layer":
        attn_kept = mlp_kept = (n - layers_removed(n, s)).astype(np.float64)
    else:
        removed = layers_removed(2 * n, s)
        attn_kept, mlp_kept = (n - (removed + 1) // 2).astype(float), (n - removed // 2).astype(float)
    return attention_block(spec, pts, attn_kept, graph=o.graph) + mlp_block(spec, pts, mlp_kept, graph=o.graph)


# Loop glue of the routed families' executors (pis's reference decoder), in dispatches: the
# views, index tensors and loop bookkeeping that no op group's kernel covers. Counted with a
# TorchDispatchMode on the executors (tests/test_dispatch.py re-counts them), as the number
# that makes each family's total match its executor relative to the dense reference decoder.
#: per routed sublayer (router score views, index reshapes)
ROUTING_GLUE: dict[str, float] = {"prefill": 11.0, "decode": 7.0}
#: sparse-attention decode, per layer (block pooling views, score reshapes, index arithmetic)
SPARSE_DECODE_GLUE: float = 20.0
#: sparse-attention prefill, per layer: (fixed, per query block) of its block loop
SPARSE_PREFILL_GLUE: tuple[float, float] = (26.0, 11.0)
#: dynamic width, per layer and per group call: (per layer, per group run); decode builds an
#: index tensor for every group each step, and counts a little less per group than the table
WIDTH_GLUE: dict[str, tuple[float, float]] = {"prefill": (117.0, 0.0), "decode": (48.0, -2.0)}
#: The study's dynamic-depth router: D → this bottleneck → 2 logits, argmax.
STUDY_ROUTER_RANK = 16


def dynamic_depth(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Dynamic M: a router per sublayer lets a fraction (1−s) of the tokens through it."""
    if o.variant("dynamic-depth") == "study":
        return _masked_depth(spec, pts, s, n, o)
    routed = n * (s > 0).astype(float)
    full = n * (s == 0).astype(float)
    t = pts.tokens
    if pts.phase == "prefill":
        kept_seq = ceil_int((1.0 - s) * pts.seq_len)
        t_k, attn = pts.batch * kept_seq, dict(attn_batch=pts.batch, q_len=kept_seq, kv_len=kept_seq)
    else:
        t_k = ceil_int((1.0 - s) * pts.batch)
        attn = dict(attn_batch=t_k, q_len=1, kv_len=ceil_int((1.0 - s) * pts.context) + 1)
    ops = attention_block(spec, pts, full, graph=o.graph) + mlp_block(spec, pts, full, graph=o.graph)
    for block in ("attn", "mlp"):
        ops += [gemm(f"{block}_router.down", t, o.router_rank, spec.hidden, routed, category="routing"),
                gemm(f"{block}_router.up", t, 1, o.router_rank, routed, category="routing")]
        if pts.phase == "prefill":
            ops.append(topk(f"{block}_router.topk", pts.batch, pts.seq_len, kept_seq, routed))
        ops.append(memop(f"{block}_gather", "gather", t_k * spec.hidden, routed, "routing"))
    ops += attention_block(spec, pts, routed, tokens=t_k, residual="scatter_add", graph=o.graph, **attn)
    ops += mlp_block(spec, pts, routed, tokens=t_k, residual="scatter_add", graph=o.graph)
    ops.append(loop_glue("routing_glue", ROUTING_GLUE[pts.phase], 2 * routed))
    return ops


def _masked_depth(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """The study's dynamic depth: every token meets a router per sublayer and is kept with
    probability 1−s; q, o, gate, up and down run as masked GEMMs over the full token grid whose
    empty tiles exit at once (priced as the GEMM of the kept rows, plus zero-filling the output);
    k and v run on every token, times the mask; attention is query-sparse over the full KV; the
    residual is a plain add. A step whose sublayer keeps no token (likely at decode batch 1)
    skips its masked work: the kept count is conditional on keeping any, with that probability.
    """
    d, hd, h, g, f = spec.hidden, spec.head_dim, spec.heads, spec.kv_heads, spec.ffn
    on, off = n * (s > 0).astype(float), n * (s == 0).astype(float)
    t = pts.tokens
    keep = 1.0 - s
    # P(a sublayer keeps any token) and the tokens it keeps when it does (decode: B tokens).
    any_kept = 1.0 - np.power(s, t.astype(np.float64)) if pts.phase == "decode" else np.ones(len(pts))
    m = np.maximum(1, round_half_up(keep * t / np.maximum(any_kept, 1e-12)))
    masked = on * any_kept
    ops = attention_block(spec, pts, off, graph=o.graph) + mlp_block(spec, pts, off, graph=o.graph)
    for block in ("attn", "mlp"):
        ops += [gemm(f"{block}_router.down", t, STUDY_ROUTER_RANK, d, on, category="routing"),
                gemm(f"{block}_router.up", t, 2, STUDY_ROUTER_RANK, on, category="routing"),
                topk(f"{block}_router.argmax", t, 2, 1, on)]
    if pts.phase == "prefill":
        attn = dict(batch=pts.batch, q_len=ceil_int(keep * pts.seq_len), kv_len=pts.seq_len)
    else:
        attn = dict(batch=m, q_len=1, kv_len=pts.kv_len)
    ops += [norm("input_norm", t * d, on, o.graph),
            gemm("q_proj", m, h * hd, d, masked), memop("q_fill", "fill", t * h * hd, masked, "routing"),
            gemm("k_proj", t, g * hd, d, on), gemm("v_proj", t, g * hd, d, on),
            memop("kv_mask", "add", t * g * hd, 2 * on, "routing"),
            *rope(m * h * hd, t * g * hd, on, o.graph),
            attention("masked_attention", pts, masked, heads=h, kv_heads=g, head_dim=hd, **attn),
            *kv_append(pts, on, pts.batch, pts.kv_len, g, hd, o),
            gemm("o_proj", m, d, h * hd, masked), memop("o_fill", "fill", t * d, masked, "routing"),
            memop("attn_residual", "add", t * d, on, "elementwise"),
            norm("post_attn_norm", t * d, on, o.graph)]
    for name, width in (("gate_proj", f), ("up_proj", f)):
        ops += [gemm(name, m, width, d, masked), memop(f"{name}_fill", "fill", t * width, masked, "routing")]
    ops += [memop("silu_mul", "silu_mul", m * f, masked, "elementwise"),
            gemm("down_proj", m, d, f, masked), memop("down_fill", "fill", t * d, masked, "routing"),
            memop("mlp_residual", "add", t * d, on, "elementwise")]
    return ops


def static_width(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static NK. Study: whole GQA groups go (q, k, v, o and the KV cache shrink), FFN
    int((1−s)·F) rounded up to 16. pis: query heads go (K/V keep every head), FFN to ``--align``."""
    if o.variant("static-width") == "study":
        g = study_kv_heads(spec, s)
        attn = dict(heads=g * spec.group_size, kv_heads=g)
        return _layers(spec, pts, n, o, attn=attn, mlp=dict(ffn=study_ffn(spec, s)))
    return _layers(spec, pts, n, o, attn=dict(heads=pruned_heads(spec, s)),
                   mlp=dict(ffn=pruned_ffn(spec, s, o.align)))


def pruned_width(spec: ModelSpec, s: np.ndarray, o: PruneOptions) -> np.ndarray:
    """static-width-hidden's hidden size D′ (study: rounded up to 16; pis: to ``--align``)."""
    return study_hidden(spec, s) if o.variant("static-width-hidden") == "study" else pruned_hidden(spec, s, o.align)


def static_width_hidden(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static NK cross-layer (SliceGPT-like): hidden size D′ everywhere, plus the residual mapping
    GEMM of each shortcut."""
    d = pruned_width(spec, s, o)
    maps = 2.0 * n * (d < spec.hidden)
    return (_layers(spec, pts, n, o, attn=dict(hidden=d), mlp=dict(hidden=d))
            + [gemm("residual_map", pts.tokens, d, d, maps)])


def semi_structured(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static K with 2:4. Study: every projection of every layer is a 2:4 GEMM (cuSPARSELt in the
    graph). pis: a fraction 2s of the layers run every projection as a 2:4 GEMM."""
    op = "gemm_2to4_graph" if o.graph else "gemm_2to4"
    if o.variant("semi-structured") == "study":
        share = (s > 0).astype(np.float64)
    else:
        share = layers_removed(n, 2.0 * s) / n
    return _layers(spec, pts, n, o, proj=_split24_projector(share, op))


def unstructured(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static K mask: dense kernels on masked weights (only the FLOPs bound shrinks)."""
    return _layers(spec, pts, n, o, proj=_masked_projector(s))


def low_rank(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static K low-rank: each projection W (N×K) becomes x·Aᵀ (rank r) then ·Bᵀ; r keeps (1−s)
    of the parameters (study: rounded up to 16; pis: floored to ``--align``)."""
    if o.variant("low-rank") == "study":
        rank = lambda nn, kk: study_rank(nn, kk, s)  # noqa: E731
    else:
        rank = lambda nn, kk: lowrank_rank(nn, kk, s, o.align)  # noqa: E731
    return _layers(spec, pts, n, o, proj=_lowrank_projector(s, rank))


def sparse_attention(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Dynamic NK on attention: a fraction (1−s) of KV blocks is attended."""
    if o.variant("sparse-attention") == "study":
        return _tile_sparse_attention(spec, pts, s, n, o)
    b, hd = o.block, spec.head_dim
    on = (s > 0).astype(float)
    c = np.full(len(pts), float(n))
    if pts.phase == "decode":
        blocks = ceil_int(pts.kv_len / b)
        kept = np.where(s > 0, np.minimum(pts.kv_len, ceil_int((1.0 - s) * blocks) * b), pts.kv_len)
        ops = attention_block(spec, pts, c * (s == 0), graph=o.graph) + [
            g for g in attention_block(spec, pts, c * (s > 0), kv_len=kept, graph=o.graph) if g.name != "attention"]
        ops += [attention("sparse_attention", pts, c * (s > 0), batch=pts.batch, q_len=1, kv_len=kept,
                          heads=spec.heads, kv_heads=spec.kv_heads, head_dim=hd),
                # Without a fused block-sparse kernel the kept K and V blocks are gathered first:
                # a cold cache read into a new tensor, priced like dynamic width's K/V gather.
                memop("kv_block_gather", "kv_concat", pts.batch * spec.kv_heads * kept * hd, 2 * c * (s > 0),
                      "routing"),
                *kv_append(pts, c * (s > 0), pts.batch, pts.kv_len, spec.kv_heads, hd, o)]
        rows = pts.batch * spec.heads
    else:
        blocks = ceil_int(pts.seq_len / b)
        # Block-sparse causal attention visits (1−s) of its blocks: its time scales with them.
        ops = [g for g in attention_block(spec, pts, c, graph=o.graph) if g.name != "attention"]
        ops.append(attention("attention", pts, c * (1.0 - s), batch=pts.batch, q_len=pts.q_len,
                             kv_len=pts.kv_len, heads=spec.heads, kv_heads=spec.kv_heads, head_dim=hd))
        rows = pts.batch * spec.heads * blocks
    kept_blocks = np.maximum(1, ceil_int((1.0 - s) * blocks))
    ops += [gemm("block_scores", rows, blocks, hd, c * on, category="routing"),
            topk("block_topk", rows, blocks, kept_blocks, c * on)]
    if pts.phase == "prefill":
        # No block-sparse kernel: a Python loop over the query blocks gathers each one's kept
        # K/V blocks and runs a dense attention on them.
        glue = SPARSE_PREFILL_GLUE[0] + SPARSE_PREFILL_GLUE[1] * blocks
    else:
        glue = np.full(len(pts), float(SPARSE_DECODE_GLUE))
    ops.append(loop_glue("block_glue", glue, c * on))
    return ops + mlp_block(spec, pts, c, graph=o.graph)


def _tile_sparse_attention(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """The study's sparse attention: a tile-skipping block-sparse kernel (64-key blocks, masks
    per KV head) in which a skipped tile loads nothing and nothing is gathered; decode is split-K
    and a merge with no scoring; prefill also computes pooled block scores (copies, means, a
    matmul and a softmax) whose result the kernel does not use."""
    b, hd, h, g = o.block, spec.head_dim, spec.heads, spec.kv_heads
    on = (s > 0).astype(float)
    c = np.full(len(pts), float(n))
    pct = np.rint(100.0 * s).astype(np.int64)
    ops = attention_block(spec, pts, c * (s == 0), graph=o.graph)
    ops += attention_block(spec, pts, c * on, graph=o.graph, attn_op="attn_block_sparse",
                           attn_extra={"sparsity_pct": np.maximum(pct, 1)})
    if pts.phase == "prefill":
        blocks = ceil_int(pts.seq_len / b)
        t = pts.tokens
        ops += [memop("block_pool", "gather", t * (h + g) * hd, c * on, "routing"),
                gemm("block_scores", pts.batch * h * blocks, blocks, hd, c * on, category="routing"),
                memop("block_softmax", "add", pts.batch * h * blocks * blocks, c * on, "routing")]
    return ops + mlp_block(spec, pts, c, graph=o.graph)


def _group_loads(pts: Points, s: np.ndarray, groups: int, on: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(tokens per group, number of such group calls) for ``groups`` routed groups.

    Prefill: every group takes its (1−s) share of each sequence (balanced). Decode: each token
    picks ceil((1−s)·groups) groups; spread evenly, a group serves floor or ceil of the
    T·k/groups picks, and a group nobody picked does not run (batch 1: only k groups run).
    """
    if pts.phase == "prefill":
        return [(pts.batch * ceil_int((1.0 - s) * pts.seq_len), on * groups)]
    k = np.maximum(1, ceil_int((1.0 - s) * groups))
    picks = pts.tokens * k
    lo, busy = picks // groups, picks % groups
    return [(lo + 1, on * busy), (np.maximum(lo, 1), on * (groups - busy) * (lo > 0))]


def dynamic_width(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Dynamic NK (WIDE-like, pis's own family): per token, only (1−s) of head groups and FFN
    channel groups run."""
    g, hd, nf = spec.kv_heads, spec.head_dim, o.ffn_groups
    hg, fg = spec.group_size, max(1, spec.ffn // nf)
    t, d_model = pts.tokens, spec.hidden
    on, off = n * (s > 0).astype(float), n * (s == 0).astype(float)
    ops = attention_block(spec, pts, off, graph=o.graph) + mlp_block(spec, pts, off, graph=o.graph)
    ops += [norm("input_norm", t * d_model, on, o.graph),
            gemm("width_router", t, g + nf, d_model, on, category="routing"),
            topk("head_topk", t, g, ceil_int((1.0 - s) * g), on),
            topk("ffn_topk", t, nf, ceil_int((1.0 - s) * nf), on),
            gemm("k_proj", t, g * hd, d_model, on), gemm("v_proj", t, g * hd, d_model, on)]
    if not o.graph:
        ops.append(memop("rope_k", "rope", t * g * hd, on, "elementwise"))
    ops += kv_append(pts, on, pts.batch, pts.kv_len, g, hd, o)
    head_loads, ffn_loads = _group_loads(pts, s, g, on), _group_loads(pts, s, nf, on)
    for t_g, calls in head_loads:
        if pts.phase == "prefill":
            attn = dict(batch=pts.batch, q_len=ceil_int((1.0 - s) * pts.seq_len), kv_len=pts.kv_len)
        else:
            attn = dict(batch=t_g, q_len=1, kv_len=pts.kv_len)
            # Decode: the group's K/V rows of the tokens that picked it are gathered out of the
            # batch's cache (eager attention needs them contiguous), one copy each for K and V.
            # That is a cold cache read into a new tensor, the data movement of a DynamicCache
            # append, so the kv_concat op times it; the gather op's table is warm, as routed
            # activations are, and times such a copy far below its in-model cost.
            ops.append(memop("kv_gather", "kv_concat", t_g * pts.kv_len * hd, 2 * calls, "kv_cache"))
        ops += [memop("head_gather", "gather", t_g * d_model, calls, "routing"),
                gemm("q_proj", t_g, hg * hd, d_model, calls)]
        if o.graph:  # one fused kernel rotates the group's q and its K/V head's k
            ops += rope(t_g * hg * hd, t_g * hd, calls, graph=True)
        else:
            ops.append(memop("rope_q", "rope", t_g * hg * hd, calls, "elementwise"))
        ops += [attention("group_attention", pts, calls, heads=hg, kv_heads=1, head_dim=hd, **attn),
                gemm("o_proj", t_g, d_model, hg * hd, calls),
                memop("head_scatter", "scatter_add", t_g * d_model, calls, "routing")]
    ops.append(norm("post_attn_norm", t * d_model, on, o.graph))
    for t_g, calls in ffn_loads:
        ops += [memop("ffn_gather", "gather", t_g * d_model, calls, "routing"),
                gemm("gate_proj", t_g, fg, d_model, calls), gemm("up_proj", t_g, fg, d_model, calls),
                memop("silu_mul", "silu_mul", t_g * fg, calls, "elementwise"),
                gemm("down_proj", t_g, d_model, fg, calls),
                memop("ffn_scatter", "scatter_add", t_g * d_model, calls, "routing")]
    per_layer, per_group = WIDTH_GLUE[pts.phase]
    runs = sum(calls for _, calls in head_loads + ffn_loads)
    ops.append(loop_glue("group_glue", 1.0, per_layer * on + per_group * runs))
    return ops


def kv_append(pts: Points, count: np.ndarray, batch: object, kv_len: object, kv_heads: object,
              head_dim: int, o: PruneOptions) -> list[OpGroup]:
    """Appending this step's K and V in decode: a full copy of the layer's cache with a
    concatenating cache; one token's K and V written in place under graph execution; nothing
    with an eager preallocated cache (the write hides in its neighbours' dispatch)."""
    if pts.phase != "decode":
        return []
    c = 2 * np.asarray(count)
    if o.kv_cache == "concat":
        return [memop("kv_append", "kv_concat", np.asarray(batch) * kv_heads * np.asarray(kv_len) * head_dim,
                      c, "kv_cache")]
    if o.graph:
        return [memop("kv_write", "kv_write", np.asarray(batch) * kv_heads * head_dim, c, "kv_cache")]
    return []


@dataclass(frozen=True)
class Family:
    """A registered pruning family."""

    name: str
    layers: LayerFn
    summary: str
    #: largest sparsity allowed (inclusive when ``max_inclusive``)
    max_sparsity: float = 1.0
    max_inclusive: bool = False
    #: False where pruning is global (hidden size) and per-layer sparsity makes no sense
    layerwise: bool = True

    def allows(self, s: "float | np.ndarray") -> np.ndarray:
        """Whether each sparsity lies in the family's range ([0, 1), or [0, 0.5] for 2:4)."""
        s = np.asarray(s, dtype=np.float64)
        below = s <= self.max_sparsity if self.max_inclusive else s < self.max_sparsity
        return np.isfinite(s) & (s >= 0) & below


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dense", dense, "no pruning"),
    Family("static-depth", static_depth, "static M: drop a fraction s of layers or sublayers"),
    Family("dynamic-depth", dynamic_depth, "dynamic M: routers skip a fraction s of tokens per sublayer"),
    Family("static-width", static_width, "static NK: drop GQA groups (or query heads) and FFN channels"),
    Family("static-width-hidden", static_width_hidden, "static NK cross-layer: shrink the hidden size",
           layerwise=False),
    Family("semi-structured", semi_structured, "static K: 2:4 sparse GEMMs (s up to 0.5)",
           max_sparsity=0.5, max_inclusive=True),
    Family("unstructured", unstructured, "static K mask: dense kernels, no real speedup"),
    Family("low-rank", low_rank, "static K low-rank: W -> two GEMMs of rank (1-s)NK/(N+K)"),
    Family("sparse-attention", sparse_attention, "dynamic NK: attend a fraction 1-s of KV blocks"),
    Family("dynamic-width", dynamic_width, "dynamic NK: tokens skip a fraction s of head/FFN groups"),
)}
