"""Host issue: eager GPU execution is no faster than the CPU can issue its framework ops.

A profile's CUDA timings are kernel times (events around the op, CUDA-graph replay): what a
graph-captured serving engine achieves. An eager PyTorch decoder also has to *issue* every op
from Python. Each framework op (an ATen dispatch: a GEMM, but also each view, transpose, cast
and slice of Hugging Face's glue) costs the host some microseconds, and while the host is
behind, the GPU idles. On the lent H100 a 4-layer Llama-3.1-8B decode step issues 245 ops
and takes 3.3 ms at batch 1, against 1.9 ms of kernels.

So every op group carries ``host_ops``: how many framework ops one call of it issues in the
executors ``pis-validate`` runs (Hugging Face Llama and pis's reference decoder), glue
included — counted, not guessed: ``tests/test_host.py`` counts the executors' dispatches with
a ``TorchDispatchMode`` and checks these totals against them. A forward pass issues

    H = host_us_per_op · (Σ count · host_ops + STEP_HOST_OPS)

and the step takes ``combine(H, D)`` for D the op sum (kernel time): the larger of the two
when one dominates, more than either where they are close, because the host falls behind on
some ops and the GPU on others. ``host_us_per_op`` and the sharpness ``p`` of the combination
are fitted per profile to its whole-decoder rows (:mod:`pis.simulator.context`).
"""

from __future__ import annotations

import numpy as np

#: Op kind of a host-only group: framework work with no kernel of its own (Python loops'
#: indexing and views). The estimator predicts no device time for it.
HOST_OP = "host"

#: Framework ops one call of each op kind issues in Hugging Face's Llama (counted with
#: ``TorchDispatchMode``, transformers 5.x, decode): the attention's own glue (q/k/v views and
#: transposes, the output's transpose and reshape, cos/sin unsqueeze) rides on the attention;
#: ``rmsnorm`` is HF's unfused LlamaRMSNorm (two casts, pow, mean, add, rsqrt, two muls); a
#: ``rope`` call rotates q or k (two slices, neg, cat, two muls, add).
HOST_OPS: dict[str, float] = {
    "gemm": 1, "gemm_2to4": 1, "attn_prefill": 11, "attn_decode": 11, "rope": 7, "rmsnorm": 8,
    "silu_mul": 2, "add": 1, "gather": 1, "scatter_add": 1, "kv_concat": 1, "topk": 1, HOST_OP: 0,
}

#: Framework ops of one forward pass outside the op graph's groups: the rotary cos/sin tables,
#: the attention mask, the cache object and the output's slicing.
STEP_HOST_OPS: float = 19.0


def combine(host_us: np.ndarray, device_us: np.ndarray, p: float) -> np.ndarray:
    """Step time when the host issues ``host_us`` of ops and the device runs ``device_us``.

    ``(H^p + D^p)^(1/p)``: the max of the two for large ``p``, their sum at ``p = 1``. An
    ``inf`` ``p`` is the plain max (a floor: the step is at least as long as either).
    """
    h = np.asarray(host_us, dtype=np.float64)
    d = np.asarray(device_us, dtype=np.float64)
    if not np.isfinite(p):
        return np.maximum(h, d)
    top = np.maximum(np.maximum(h, d), 1e-30)
    # Scaled by the larger term so that large p cannot overflow.
    return top * ((h / top) ** p + (d / top) ** p) ** (1.0 / p)
