"""A pruned decoder's whole op graph: the family's layers (:mod:`pis.simulator.families`), the
model's ends and the decode KV-cache updates, with the checks that make bad input one clear error.

:func:`build_ops` calls the family once for uniform sparsity, or once per distinct per-layer
value with ``--layer-sparsity``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pis.errors import PisError
from pis.models import ModelSpec
from pis.pruned import PruneOptions, layers_removed
from pis.simulator.families import FAMILIES, Family, kv_append, pruned_width
from pis.profiles.schema import OPS, QUANTIZED_GEMM
from pis.simulator.opgraph import GEMM_CATEGORY, LM_HEAD, ends
from pis.simulator.points import OpGroup, Points


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
    if fam.name == "static-depth" and opts.layer_sparsity is None and opts.variant("static-depth") == "pis":
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


def _with_kv_appends(ops: list[OpGroup], pts: Points, spec: ModelSpec, o: PruneOptions) -> list[OpGroup]:
    # Every decode attention over the cache appends to it; families whose attention reads a
    # part of the cache add their own (the append still writes the whole batch's tokens).
    extra = []
    if pts.phase == "decode":
        for g in ops:
            if g.name == "attention" and g.op in ("attn_decode", "attn_block_sparse"):
                sh = g.shape
                extra += kv_append(pts, g.count, sh["batch"], sh["kv_len"], sh["kv_heads"], spec.head_dim, o)
    return ops + extra


def build_ops(method: str, spec: ModelSpec, pts: Points, opts: PruneOptions | None = None) -> list[OpGroup]:
    """Every op group the pruned decoder executes for the design points ``pts`` (options left
    None take eager execution's defaults; a simulator resolves them for its profile first)."""
    opts = opts or PruneOptions()
    if opts.execution is None or opts.kv_cache is None or opts.op_graph is None:
        opts = opts.resolved("cpu" if opts.execution != "graph" else "cuda")
    fam = get_family(method)
    hidden = None
    if opts.layer_sparsity is None or method == "dense":
        check_sparsity(fam, spec, pts.sparsity, opts)
        ops = fam.layers(spec, pts, pts.sparsity, spec.layers, opts)
        if method == "static-width-hidden":
            hidden = pruned_width(spec, pts.sparsity, opts)
    else:
        ops = []
        for value, count in _layer_groups(spec, fam, opts):
            ops += fam.layers(spec, pts, np.full(len(pts), value), count, opts)
    return quantize_weights(_with_kv_appends(ends(spec, pts, hidden, graph=opts.graph) + ops, pts, spec, opts), opts)


def quantize_weights(ops: list[OpGroup], o: PruneOptions) -> list[OpGroup]:
    """The op graph with the decoder's GEMMs on ``o.weights``: every dense GEMM of the layers
    (projections, FFN, low-rank factors, residual maps) becomes the weight format's GEMM; the LM
    head keeps the activation dtype unless ``o.quantize_head``; routers, attention and 2:4 GEMMs
    keep theirs (no 2:4 kernel takes quantized weights). int4 groups ``o.group_size`` inputs, or
    the largest group dividing a smaller K (a low-rank factor's rank), as the quantizer does."""
    if o.weights == "native":
        return ops
    op = QUANTIZED_GEMM[o.weights]
    out = []
    for g in ops:
        if g.op == "gemm" and g.category == GEMM_CATEGORY and (g.name != LM_HEAD or o.quantize_head):
            shape = dict(g.shape)
            if "group_size" in OPS[op].columns:  # a K the group size does not divide: the largest group that does
                shape["group_size"] = np.gcd(np.asarray(shape["k"], dtype=np.int64), np.int64(o.group_size))
            g = replace(g, op=op, shape=shape)
        out.append(g)
    return out
