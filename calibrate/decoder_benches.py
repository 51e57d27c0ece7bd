"""Benches of whole decoders: the rows the simulator's in-model correction is fitted to.

Each times one prefill forward or one decode step of a small decoder end to end, on the
executors ``pis-validate`` runs (:mod:`pis.executors`), with the same discipline: an untimed
setup before every repeat (a fresh KV cache) and, on a CPU, the last-level cache evicted.
"""

from __future__ import annotations

from typing import Callable

import torch

from pis.calibrate.ops import Bench, Builder, Shape
from pis.calibrate.timing import TimingConfig, measure_step
from pis.errors import Unsupported
from pis.executors.hf import build_hf, fuse_kernels
from pis.executors.reference import build_reference
from pis.executors.base import Step, token_ids
from pis.models import ModelSpec
from pis.profiles.schema import ROUTED_DECODER_OPS
from pis.pruned import PruneOptions

#: Whole-decoder benches: about a second of repeats each (they are few, and their medians
#: set the level of every simulation through the in-model correction).
DECODER_TIMING = TimingConfig(warmup=2, min_repeats=7, max_repeats=25, target_s=1.0, flush_cache=True)


def _untimed_call(step: Step) -> Callable[[], object]:
    # ``fn`` of a whole-decoder bench: setup and step (its timing goes through ``timed``).
    def fn() -> object:
        if step.setup is not None:
            step.setup()
        return step.run()
    return fn


def _decoder_spec(s: Shape) -> ModelSpec:
    return ModelSpec("decoder-row", hidden=int(s["hidden"]), ffn=int(s["ffn"]), layers=int(s["layers"]),
                     heads=int(s["heads"]), kv_heads=int(s["kv_heads"]), head_dim=int(s["head_dim"]),
                     vocab=1024)


def build_dense_decoder(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """A dense Hugging Face Llama decoder of the shape's dimensions, timed end to end.

    Prefill: one forward of ``batch x q_len`` tokens; decode: one step against a fresh
    ``DynamicCache`` of ``kv_len`` (built untimed before every repeat), exactly as
    ``pis-validate`` times its models. The base model runs (no LM head: the head is one GEMM
    the profile measures already).
    """
    try:
        import transformers  # noqa: F401 - the `validate` extra
    except ImportError:
        raise Unsupported("dense_decoder needs transformers (pip install 'pruninginfersim[validate]')") from None

    spec = _decoder_spec(s)
    hf = build_hf(spec, "dense", 0.0, device, dtype, PruneOptions())
    base, b = hf.model.model, int(s["batch"])
    if int(s["causal"]):
        ids = token_ids(spec.vocab, b, int(s["q_len"]), device)
        step = Step(lambda: base(input_ids=ids, use_cache=True))
    else:
        from transformers import DynamicCache

        ids = token_ids(spec.vocab, b, 1, device)
        cache_kv = hf.kv_tensors(b, int(s["kv_len"]))
        state: dict = {}

        def setup() -> None:
            state["cache"] = DynamicCache(cache_kv, config=hf.config)

        step = Step(lambda: base(input_ids=ids, use_cache=True, **{hf.cache_kw: state["cache"]}), setup)
    return Bench(_untimed_call(step), "hf-transformers", timed=lambda: measure_step(step, device, DECODER_TIMING))


def _reference_decoder_bench(s: Shape, method: str, sparsity: float, dtype: torch.dtype,
                             device: torch.device) -> Bench:
    """``method``'s decoder of the shape on pis's reference decoder (no LM head), decode writing
    a preallocated cache in place, timed as ``pis-validate`` times the reference decoder
    (fresh cache copies before every repeat)."""

    ref = build_reference(_decoder_spec(s), method, sparsity, device, dtype, PruneOptions(kv_cache="preallocated"))
    phase = "prefill" if int(s["causal"]) else "decode"
    step = ref.step(phase, int(s["batch"]), int(s["q_len"]), int(s["kv_len"]), logits=False)
    return Bench(_untimed_call(step), "pis-reference", timed=lambda: measure_step(step, device, DECODER_TIMING))


def build_dense_decoder_prealloc(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """The dense decoder of the shape on pis's reference decoder, decode into a preallocated cache:
    a lean executor, no Hugging Face glue, the new token's K/V written in place."""
    return _reference_decoder_bench(s, "dense", 0.0, dtype, device)


def build_routed_decoder(family: str) -> Builder:
    """The builder of ``family``'s whole decoder on pis's reference decoder at the shape's
    ``sparsity_pct``."""
    return lambda s, dtype, device: _reference_decoder_bench(s, family, int(s["sparsity_pct"]) / 100.0, dtype, device)


def build_dense_decoder_graph(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """The dense Hugging Face decoder of the shape's dimensions as graph execution runs it: a
    static cache written in place, Liger's RMSNorm and RoPE where installed (else torch's fused
    RMSNorm), the whole step captured in one CUDA graph and replayed (no LM head)."""
    if device.type != "cuda":
        raise Unsupported("graph-replayed decoders need a CUDA device")
    try:
        import transformers  # noqa: F401 - the `validate` extra
    except ImportError:
        raise Unsupported("dense_decoder_graph needs transformers (pip install 'pruninginfersim[validate]')") from None
    hf = build_hf(_decoder_spec(s), "dense", 0.0, device, dtype, PruneOptions())
    kernels = fuse_kernels(hf.model, hf.config)
    phase = "prefill" if int(s["causal"]) else "decode"
    step = hf.graph_step(phase, int(s["batch"]), int(s["q_len"]), int(s["kv_len"]), logits=False)
    return Bench(step.run, f"hf-static-graph-{kernels}",
                 timed=lambda: measure_step(step, device, DECODER_TIMING))


#: Builders of the whole-decoder ops (:data:`pis.profiles.schema.WHOLE_DECODER_OPS`).
DECODER_BUILDERS: dict[str, Builder] = {
    "dense_decoder": build_dense_decoder,
    "dense_decoder_prealloc": build_dense_decoder_prealloc,
    # the same Hugging Face decoder; its rows' shapes are the negligible width (grid.FRAMEWORK_DIMS)
    "decoder_framework": build_dense_decoder,
    "dense_decoder_graph": build_dense_decoder_graph,
    **{op: build_routed_decoder(family) for family, op in ROUTED_DECODER_OPS.items()},
}
