"""Every bench calibration can run, by op: :mod:`pis.calibrate.ops` for the ops an eager
simulation executes, :mod:`pis.calibrate.graph_benches` for graph execution's kernels,
:mod:`pis.calibrate.quant_benches` for GEMMs with quantized weights,
:mod:`pis.calibrate.decoder_benches` for whole decoders."""

from __future__ import annotations

import torch

from pis.calibrate import graph_benches as gb
from pis.calibrate.decoder_benches import DECODER_BUILDERS
from pis.calibrate.ops import OP_BUILDERS, Bench, Builder, Shape
from pis.calibrate.quant_benches import QUANT_BUILDERS
from pis.profiles.schema import OPS

#: Graph execution's kernels (:mod:`pis.calibrate.graph_benches`) and the zero-fill.
GRAPH_BUILDERS: dict[str, Builder] = {
    "fill": gb.build_fill, "rmsnorm_fused": gb.build_rmsnorm_fused, "rope_fused": gb.build_rope_fused,
    "kv_write": gb.build_kv_write, "attn_block_sparse": gb.build_attn_block_sparse,
    "gemm_2to4_graph": gb.build_gemm_2to4_graph,
}
BUILDERS: dict[str, Builder] = {**OP_BUILDERS, **GRAPH_BUILDERS, **QUANT_BUILDERS, **DECODER_BUILDERS}
assert set(BUILDERS) == set(OPS), "every schema op needs a builder"


def build(op: str, shape: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """The benchmark of ``op`` at ``shape`` (raises :class:`pis.errors.Unsupported` when it
    cannot run here)."""
    return BUILDERS[op](shape, dtype, device)
