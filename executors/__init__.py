"""Executors: real pruned models with random weights, ready to time one prefill or one decode step.

Static families run through Hugging Face transformers (:mod:`pis.executors.hf`); the routed
families (dynamic depth, sparse attention, dynamic width) through pis's reference decoder
(:mod:`pis.executors.reference`), which really routes tokens. Calibration times their whole
decoders for the in-model correction's rows; validation times them against predictions.
"""

from __future__ import annotations

import torch

from pis.errors import PisError
from pis.executors.base import ModelUnderTest, Step
from pis.executors.hf import HF_FAMILIES, build_hf
from pis.executors.reference import build_reference
from pis.models import ModelSpec
from pis.pruned import ROUTED_FAMILIES, PruneOptions

#: Every family an executor builds.
SUPPORTED: tuple[str, ...] = HF_FAMILIES + ROUTED_FAMILIES


def build_model(spec: ModelSpec, method: str, sparsity: float, device: torch.device,
                dtype: torch.dtype, opts: PruneOptions | None = None,
                reference_dense: bool = False) -> ModelUnderTest:
    """The real model of ``method``; ``reference_dense`` runs ``dense`` on the reference decoder."""
    opts = opts or PruneOptions()
    if method not in SUPPORTED:
        raise PisError(f"pis-validate cannot build {method!r}; it builds {', '.join(SUPPORTED)}")
    if method in ROUTED_FAMILIES or (method == "dense" and reference_dense):
        if opts.weights != "native":
            raise PisError(f"quantized weights run on the Hugging Face families ({', '.join(HF_FAMILIES)}), "
                           f"not on {method}'s reference decoder")
        return build_reference(spec, method, sparsity, device, dtype, opts)
    return build_hf(spec, method, sparsity, device, dtype, opts)


__all__ = ["SUPPORTED", "HF_FAMILIES", "ROUTED_FAMILIES", "ModelUnderTest", "Step", "build_model"]
