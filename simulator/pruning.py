"""Pruning families: pure functions from (model spec, design points, options) to op groups.

Each family is one function building the ops of ``n`` decoder layers that share a sparsity,
registered in :data:`FAMILIES` with one line. :func:`build_ops` adds the model's ends and, with
``--layer-sparsity``, calls the family once per distinct per-layer value. Semantics per family
are specified in ``simulator/FAMILIES.md`` (the same spec ``pis-validate`` executes). At
sparsity 0 every family runs exactly the dense graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pis.errors import PisError
from pis.pruned import PruneOptions, ceil_int, layers_removed, lowrank_rank, pruned_ffn, pruned_heads, pruned_hidden
from pis.models import ModelSpec
from pis.simulator.opgraph import (Projector, attention, attention_block, dense_projector, ends,
                                   gemm, loop_glue, memop, mlp_block, topk)
from pis.simulator.points import OpGroup, Points


# --- projectors: how one linear layer executes under a family -------------------------------

def _lowrank_projector(s: np.ndarray, align: int) -> Projector:
    def proj(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray, count: np.ndarray) -> list[OpGroup]:
        r = lowrank_rank(n, k, s, align)
        lowrank = count * (s > 0)
        return [gemm(name, m, n, k, count * (s == 0)),
                gemm(f"{name}.A", m, r, k, lowrank),
                gemm(f"{name}.B", m, n, r, lowrank)]
    return proj


def _masked_projector(s: np.ndarray) -> Projector:
    def proj(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray, count: np.ndarray) -> list[OpGroup]:
        return [gemm(name, m, n, k, count, work_scale=1.0 - s)]
    return proj


def _sparse24_projector(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray,
                        count: np.ndarray) -> list[OpGroup]:
    return [gemm(name, m, n, k, count, op="gemm_2to4")]


# --- families: ops of ``n`` layers at sparsity ``s`` ------------------------------------------

LayerFn = Callable[[ModelSpec, Points, np.ndarray, int, PruneOptions], list[OpGroup]]


def _dense_layers(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions,
                  proj: Projector = dense_projector) -> list[OpGroup]:
    c = np.full(len(pts), float(n))
    return attention_block(spec, pts, c, proj=proj) + mlp_block(spec, pts, c, proj=proj)


def dense(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """The unpruned decoder."""
    return _dense_layers(spec, pts, s, n, o)


def static_depth(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static M: remove round(s·n) layers, or round(s·2n) sublayers (attention first)."""
    if o.granularity == "layer":
        kept = (n - layers_removed(n, s)).astype(np.float64)
        return attention_block(spec, pts, kept) + mlp_block(spec, pts, kept)
    removed = layers_removed(2 * n, s)
    attn_kept = n - (removed + 1) // 2
    mlp_kept = n - removed // 2
    return attention_block(spec, pts, attn_kept.astype(float)) + mlp_block(spec, pts, mlp_kept.astype(float))


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


def dynamic_depth(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Dynamic M (Mixture-of-Depths): a router per sublayer sends (1−s) of the tokens through it."""
    routed = n * (s > 0).astype(float)
    full = n * (s == 0).astype(float)
    t = pts.tokens
    if pts.phase == "prefill":
        kept_seq = ceil_int((1.0 - s) * pts.seq_len)
        t_k, attn = pts.batch * kept_seq, dict(attn_batch=pts.batch, q_len=kept_seq, kv_len=kept_seq)
    else:
        t_k = ceil_int((1.0 - s) * pts.batch)
        attn = dict(attn_batch=t_k, q_len=1, kv_len=ceil_int((1.0 - s) * pts.context) + 1)
    ops = attention_block(spec, pts, full) + mlp_block(spec, pts, full)
    for block in ("attn", "mlp"):
        ops += [gemm(f"{block}_router.down", t, o.router_rank, spec.hidden, routed, category="routing"),
                gemm(f"{block}_router.up", t, 1, o.router_rank, routed, category="routing")]
        if pts.phase == "prefill":
            ops.append(topk(f"{block}_router.topk", pts.batch, pts.seq_len, kept_seq, routed))
        ops.append(memop(f"{block}_gather", "gather", t_k * spec.hidden, routed, "routing"))
    ops += attention_block(spec, pts, routed, tokens=t_k, residual="scatter_add", **attn)
    ops += mlp_block(spec, pts, routed, tokens=t_k, residual="scatter_add")
    ops.append(loop_glue("routing_glue", ROUTING_GLUE[pts.phase], 2 * routed))
    return ops


def static_width(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static NK: fewer query heads (N of q, K of o) and FFN channels (N of gate/up, K of down)."""
    c = np.full(len(pts), float(n))
    return (attention_block(spec, pts, c, heads=pruned_heads(spec, s))
            + mlp_block(spec, pts, c, ffn=pruned_ffn(spec, s, o.align)))


def _hidden_layers(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    d = pruned_hidden(spec, s, o.align)
    c = np.full(len(pts), float(n))
    maps = 2.0 * n * (d < spec.hidden)
    return (attention_block(spec, pts, c, hidden=d) + mlp_block(spec, pts, c, hidden=d)
            + [gemm("residual_map", pts.tokens, d, d, maps)])


def _split24_projector(sparse_share: np.ndarray) -> Projector:
    def proj(name: str, m: np.ndarray, n: np.ndarray, k: np.ndarray, count: np.ndarray) -> list[OpGroup]:
        return [gemm(name, m, n, k, count * (1.0 - sparse_share)),
                gemm(f"{name}.2:4", m, n, k, count * sparse_share, op="gemm_2to4")]
    return proj


def semi_structured(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static K with 2:4: a fraction 2s of the layers run every projection on sparse tensor cores."""
    share = layers_removed(n, 2.0 * s) / n
    return _dense_layers(spec, pts, s, n, o, proj=_split24_projector(share))


def unstructured(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static K mask: dense kernels on masked weights (only the FLOPs bound shrinks)."""
    return _dense_layers(spec, pts, s, n, o, proj=_masked_projector(s))


def low_rank(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Static K low-rank: each projection W (N×K) becomes x·Aᵀ (rank r) then ·Bᵀ."""
    return _dense_layers(spec, pts, s, n, o, proj=_lowrank_projector(s, o.align))


def sparse_attention(spec: ModelSpec, pts: Points, s: np.ndarray, n: int, o: PruneOptions) -> list[OpGroup]:
    """Dynamic NK on attention: a fraction (1−s) of KV blocks is attended, plus block selection."""
    b, hd = o.block, spec.head_dim
    on = (s > 0).astype(float)
    c = np.full(len(pts), float(n))
    if pts.phase == "decode":
        blocks = ceil_int(pts.kv_len / b)
        kept = np.where(s > 0, np.minimum(pts.kv_len, ceil_int((1.0 - s) * blocks) * b), pts.kv_len)
        ops = attention_block(spec, pts, c * (s == 0)) + [
            g for g in attention_block(spec, pts, c * (s > 0), kv_len=kept) if g.name != "attention"]
        ops += [attention("sparse_attention", pts, c * (s > 0), batch=pts.batch, q_len=1, kv_len=kept,
                          heads=spec.heads, kv_heads=spec.kv_heads, head_dim=hd),
                # Without a fused block-sparse kernel the kept K and V blocks are gathered first:
                # a cold cache read into a new tensor, priced like dynamic width's K/V gather.
                memop("kv_block_gather", "kv_concat", pts.batch * spec.kv_heads * kept * hd, 2 * c * (s > 0),
                      "routing"),
                *_kv_append(pts, c * (s > 0), pts.batch, pts.kv_len, spec.kv_heads, hd, o)]
        rows = pts.batch * spec.heads
    else:
        blocks = ceil_int(pts.seq_len / b)
        # Block-sparse causal attention visits (1−s) of its blocks: its time scales with them.
        ops = [g for g in attention_block(spec, pts, c) if g.name != "attention"]
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
    return ops + mlp_block(spec, pts, c)


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
    """Dynamic NK (WIDE-like): per token, only (1−s) of head groups and FFN channel groups run."""
    g, hd, nf = spec.kv_heads, spec.head_dim, o.ffn_groups
    hg, fg = spec.group_size, max(1, spec.ffn // nf)
    t, d_model = pts.tokens, spec.hidden
    on, off = n * (s > 0).astype(float), n * (s == 0).astype(float)
    ops = attention_block(spec, pts, off) + mlp_block(spec, pts, off)
    ops += [memop("input_norm", "rmsnorm", t * d_model, on, "norm"),
            gemm("width_router", t, g + nf, d_model, on, category="routing"),
            topk("head_topk", t, g, ceil_int((1.0 - s) * g), on),
            topk("ffn_topk", t, nf, ceil_int((1.0 - s) * nf), on),
            gemm("k_proj", t, g * hd, d_model, on), gemm("v_proj", t, g * hd, d_model, on),
            memop("rope_k", "rope", t * g * hd, on, "elementwise"),
            *_kv_append(pts, on, pts.batch, pts.kv_len, g, hd, o)]
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
                gemm("q_proj", t_g, hg * hd, d_model, calls),
                memop("rope_q", "rope", t_g * hg * hd, calls, "elementwise"),
                attention("group_attention", pts, calls, heads=hg, kv_heads=1, head_dim=hd, **attn),
                gemm("o_proj", t_g, d_model, hg * hd, calls),
                memop("head_scatter", "scatter_add", t_g * d_model, calls, "routing")]
    ops.append(memop("post_attn_norm", "rmsnorm", t * d_model, on, "norm"))
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
    Family("static-depth", static_depth, "static M: drop round(s*L) layers"),
    Family("dynamic-depth", dynamic_depth, "dynamic M: routers skip a fraction s of tokens per sublayer"),
    Family("static-width", static_width, "static NK: drop query heads and FFN channels"),
    Family("static-width-hidden", _hidden_layers, "static NK cross-layer: shrink the hidden size",
           layerwise=False),
    Family("semi-structured", semi_structured, "static K: 2:4 sparsity on a fraction 2s of layers",
           max_sparsity=0.5, max_inclusive=True),
    Family("unstructured", unstructured, "static K mask: dense kernels, no real speedup"),
    Family("low-rank", low_rank, "static K low-rank: W -> two GEMMs of rank (1-s)NK/(N+K)"),
    Family("sparse-attention", sparse_attention, "dynamic NK: attend a fraction 1-s of KV blocks"),
    Family("dynamic-width", dynamic_width, "dynamic NK: tokens skip a fraction s of head/FFN groups"),
)}


def describe_families() -> dict[str, str]:
    """Family name -> one-line summary (for --help)."""
    return {k: f.summary for k, f in FAMILIES.items()}


def get_family(method: str) -> Family:
    """The family called ``method``, or a PisError listing the known ones."""
    try:
        return FAMILIES[method]
    except KeyError:
        raise PisError(f"unknown method {method!r}; known: {', '.join(FAMILIES)}") from None


def check_methods(methods: list[str]) -> None:
    """Raise PisError naming the first method that is not a family."""
    unknown = [m for m in methods if m not in FAMILIES]
    if unknown:
        raise PisError(f"unknown method {unknown[0]!r}; known: {', '.join(FAMILIES)}")


def check_sparsity(fam: Family, spec: ModelSpec, s: np.ndarray, opts: PruneOptions) -> None:
    """Raise PisError for sparsities the family cannot realize on ``spec``."""
    s = np.asarray(s, dtype=np.float64)
    hi = fam.max_sparsity
    bad = ~fam.allows(s)
    if bad.any():
        interval = f"[0, {hi}]" if fam.max_inclusive else f"[0, {hi:g})"
        raise PisError(f"{fam.name}: sparsity {s[bad][0]:g} is outside {interval}")
    if fam.name == "static-depth" and opts.layer_sparsity is None:
        units = spec.layers * (2 if opts.granularity == "sublayer" else 1)
        gone = layers_removed(units, s)
        if (gone >= units).any():
            raise PisError(f"static-depth: sparsity {s[gone >= units][0]:g} removes all {units} "
                           f"{'sub' if units > spec.layers else ''}layers of {spec.name}")


def _layer_groups(spec: ModelSpec, fam: Family, opts: PruneOptions) -> list[tuple[float, int]]:
    values = np.asarray(opts.layer_sparsity, dtype=np.float64)
    if len(values) != spec.layers:
        raise PisError(f"--layer-sparsity has {len(values)} values but {spec.name} has {spec.layers} layers")
    if not fam.layerwise:
        raise PisError(f"{fam.name} prunes the hidden size of every layer at once; "
                       "--layer-sparsity does not apply")
    if fam.name == "static-depth":
        if not np.isin(values, (0.0, 1.0)).all():
            raise PisError("static-depth with --layer-sparsity: each value must be 0 (keep) or 1 (remove)")
        if values.all():
            raise PisError("static-depth: --layer-sparsity removes every layer")
    else:
        check_sparsity(fam, spec, values, opts)
    uniq, counts = np.unique(values, return_counts=True)
    return [(float(v), int(c)) for v, c in zip(uniq, counts)]


def _kv_append(pts: Points, count: np.ndarray, batch: object, kv_len: object, kv_heads: object,
               head_dim: int, o: PruneOptions) -> list[OpGroup]:
    """Appending this step's K and V: a full copy of the layer's cache with a concat cache."""
    if pts.phase != "decode" or o.kv_cache != "concat":
        return []
    return [memop("kv_append", "kv_concat", np.asarray(batch) * kv_heads * np.asarray(kv_len) * head_dim,
                  2 * np.asarray(count), "kv_cache")]


def _with_kv_appends(ops: list[OpGroup], pts: Points, spec: ModelSpec, o: PruneOptions) -> list[OpGroup]:
    # Every decode attention over the cache appends to it; sparse attention adds its own
    # (its attention reads only the kept blocks, the append copies the whole cache).
    extra = []
    for g in ops:
        if g.op == "attn_decode" and g.name == "attention":
            sh = g.shape
            extra += _kv_append(pts, g.count, sh["batch"], sh["kv_len"], sh["kv_heads"], spec.head_dim, o)
    return ops + extra


def build_ops(method: str, spec: ModelSpec, pts: Points, opts: PruneOptions | None = None) -> list[OpGroup]:
    """Every op group the pruned decoder executes for the design points ``pts``."""
    opts = opts or PruneOptions()
    fam = get_family(method)
    hidden = None
    if opts.layer_sparsity is None or method == "dense":
        check_sparsity(fam, spec, pts.sparsity, opts)
        ops = fam.layers(spec, pts, pts.sparsity, spec.layers, opts)
        if method == "static-width-hidden":
            hidden = pruned_hidden(spec, pts.sparsity, opts.align)
    else:
        ops = []
        for value, count in _layer_groups(spec, fam, opts):
            ops += fam.layers(spec, pts, np.full(len(pts), value), count, opts)
    return _with_kv_appends(ends(spec, pts, hidden) + ops, pts, spec, opts)
