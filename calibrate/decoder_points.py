"""The whole-decoder points of a calibration grid: the rows the in-model correction is fitted to.

Every grid times a small dense decoder end to end on Hugging Face (``dense_decoder``) and on
pis's reference decoder (``dense_decoder_prealloc``) at a few prefill and decode points. CPU
grids beyond ``quick`` also time each routed family's own decoder at two sparsities, the Hugging
Face decoder at a quarter of its FFN (which separates the GEMMs' in-model excess from the other
ops') and at a negligible width and four depths (``decoder_framework``: Hugging Face's framework
cost per step and per dispatch). See ``docs/model.md``.
"""

from __future__ import annotations

import itertools
from typing import Iterable

from pis.calibrate.point import Point, point
from pis.profiles.schema import DECODER_OPS, FRAMEWORK_OP, GRAPH_DECODER_OP, ROUTED_DECODER_OPS


#: Model dimensions of the ``dense_decoder`` points when no ``--model`` is given.
DECODER_MODELS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=256, ffn=704, heads=4, kv_heads=2, head_dim=64, layers=2),
    "cpu": dict(hidden=1024, ffn=2816, heads=16, kv_heads=4, head_dim=64, layers=4),
    "cuda": dict(hidden=4096, ffn=14336, heads=32, kv_heads=8, head_dim=128, layers=2),
}
#: (batch, seq) of the prefill and (batch, context) of the decode ``dense_decoder`` points.
#: Tokens, batch and context sit on the per-op grids' own axes (powers of two), so the op sum
#: each factor divides by is made of exact hits, not of the op interpolation's own error;
#: the (batch, seq) splits and most contexts differ from the validation suites' points.
DECODER_SHAPES: dict[tuple[str, str], tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]] = {
    ("tiny", "cpu"): (((1, 64),), ((1, 64),)),
    ("tiny", "cuda"): (((1, 512),), ((8, 1024),)),
    ("quick", "cpu"): (((1, 64), (4, 512)), tuple(itertools.product((1, 4, 16), (256, 4096)))),
    ("cpu", "cpu"): (((1, 64), (2, 128), (2, 256), (4, 512)),
                     tuple(itertools.product((1, 2, 4, 8, 16), (256, 1024, 4096)))),
    ("cuda", "cuda"): (((1, 512), (4, 1024), (4, 4096), (16, 4096)),
                       tuple(itertools.product((1, 8, 32, 64), (512, 2048, 8192)))),
}


#: Sparsities of the routed decoders' rows: two, so that a simulation between them interpolates
#: (the validation suites simulate sparsity 0.5, which no row measures).
ROUTED_DECODER_SPARSITIES: tuple[float, ...] = (0.25, 0.75)
#: Batch and context axes of the routed decoders' decode rows (a corner subset of the dense
#: rows' grid: twelve rows per family instead of thirty).
ROUTED_DECODE_AXES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "cpu": ((1, 4, 16), (256, 4096)),
}


#: CPU grids (not tiny) also time the Hugging Face decoder (``dense_decoder``) at the same
#: points with its FFN this many times narrower (aligned to 64), so the in-model correction can
#: tell the GEMMs' excess from the other ops' (their shares differ between the two widths; at one
#: width the GEMM and non-GEMM op sums rise together and no fit can separate them).
NARROW_FFN_DIVISOR = 4


def narrow_dims(dims: dict[str, int]) -> dict[str, int]:
    """``dims`` with the FFN :data:`NARROW_FFN_DIVISOR` times narrower, a multiple of 64."""
    return dict(dims, ffn=max(64, 64 * round(dims["ffn"] / NARROW_FFN_DIVISOR / 64)))


#: The decoder_framework rows (CPU grids, not tiny): Hugging Face's decoder at a width where its
#: ops' work is negligible, at four depths and two small points per phase, so that the framework
#: cost per step splits into a constant and a cost per dispatch (simulator/inmodel/framework.py).
FRAMEWORK_DIMS: dict[str, int] = dict(hidden=64, ffn=128, heads=2, kv_heads=1, head_dim=32)
#: 1 to 8 layers: a spread of depths pins the cost per dispatch down more steadily than the two
#: depths a split needs at least, which leave it at the mercy of one noisy measurement.
FRAMEWORK_LAYERS: tuple[int, ...] = (1, 2, 4, 8)
FRAMEWORK_SHAPES: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = (
    ((1, 32), (1, 64)), ((1, 256), (1, 1024)))
#: The quick grid's framework rows: the two depths and one point per phase a split needs.
QUICK_FRAMEWORK_LAYERS: tuple[int, ...] = (1, 4)
QUICK_FRAMEWORK_SHAPES: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] = (((1, 32),), ((1, 256),))


def decoder_shapes(name: str, device_kind: str) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(prefill, decode) shapes of the whole-decoder points of grid ``name`` on ``device_kind``."""
    kind = "cuda" if device_kind == "cuda" else "cpu"
    if name in ("tiny", "quick") and (name, kind) in DECODER_SHAPES:
        return DECODER_SHAPES[(name, kind)]
    return DECODER_SHAPES[(kind, kind)]


def _decoder_points(op: str, prefill: Iterable[tuple[int, int]], decode: Iterable[tuple[int, int]],
                    **dims: int) -> list[Point]:
    """Whole-decoder points of ``op``: prefill at each (batch, seq), then decode at each (batch, context)."""
    return ([point(op, batch=b, q_len=q, kv_len=q, causal=1, **dims) for b, q in prefill]
            + [point(op, batch=b, q_len=1, kv_len=c, causal=0, **dims) for b, c in decode])


def decoder_points(name: str, device_kind: str, dims: dict[str, int] | None = None) -> list[Point]:
    """The whole-decoder points of grid ``name`` (:data:`WHOLE_DECODER_OPS`): the model's (or a default) shape."""
    kind = "cuda" if device_kind == "cuda" else "cpu"
    tiny = name == "tiny"
    base = dict(DECODER_MODELS["tiny" if tiny and dims is None else kind])
    if dims is not None:
        base.update({k: int(dims[k]) for k in ("hidden", "ffn", "heads", "kv_heads", "head_dim")})
        # Enough layers that per-layer effects dominate, few enough to stay cheap.
        base["layers"] = int(min(dims["layers"], 4 if dims["hidden"] <= 2048 else 2))
    prefill, decode = decoder_shapes(name, device_kind)
    pts = [pt for op in DECODER_OPS for pt in _decoder_points(op, prefill, decode, **base)]
    if kind == "cuda":
        # Graph execution's in-model check: the same decoder captured in one CUDA graph.
        pts += _decoder_points(GRAPH_DECODER_OP, prefill, decode, **base)
    if kind == "cpu" and name == "quick":
        # A first profile in minutes: Hugging Face's framework cost, split at two depths, and
        # neither the routed decoders nor the narrow FFN (their families keep the dense law).
        for layers in QUICK_FRAMEWORK_LAYERS:
            pts += _decoder_points(FRAMEWORK_OP, *QUICK_FRAMEWORK_SHAPES, **dict(FRAMEWORK_DIMS, layers=layers))
        return pts
    # Routed decoders: CPU grids only (the GPU's in-model correction, the host-issue model, is
    # fitted to dense rows; see simulator/inmodel/host_issue.py), and not the seconds-long tiny grid.
    if kind in ROUTED_DECODE_AXES and not tiny:
        routed_decode = tuple(itertools.product(*ROUTED_DECODE_AXES[kind]))
        for op in ROUTED_DECODER_OPS.values():
            for pct in (round(100 * s) for s in ROUTED_DECODER_SPARSITIES):
                pts += _decoder_points(op, prefill, routed_decode, sparsity_pct=pct, **base)
        # The narrow Hugging Face decoder: CPU only too (the GPU host-issue model has one device factor).
        pts += _decoder_points(DECODER_OPS[0], prefill, decode, **narrow_dims(base))
        # Hugging Face's framework cost: CPU only too (the GPU host-issue model prices dispatches).
        for layers in FRAMEWORK_LAYERS:
            pts += _decoder_points(FRAMEWORK_OP, *FRAMEWORK_SHAPES, **dict(FRAMEWORK_DIMS, layers=layers))
    return pts


