"""Dispatches: how many ATen calls the host issues for each op of the graph.

An eager PyTorch decoder issues every op from Python; each dispatch (a GEMM, but also each view,
transpose, cast and slice of Hugging Face's own glue) costs the host some microseconds. On a
GPU that time is the host-issue term of the in-model correction (:mod:`pis.simulator.inmodel`);
on a CPU it prices Hugging Face's framework cost per dispatch.

Every op group carries ``dispatches``: how many dispatches one call of it issues in the
executors ``pis-validate`` runs (Hugging Face Llama and pis's reference decoder), glue included.
These are counted, not guessed: ``tests/test_dispatch.py`` counts the executors' dispatches with
a ``TorchDispatchMode`` and checks the totals against them.
"""

from __future__ import annotations

#: Op kind of a loop-glue group: host-only dispatches with no kernel of their own (a Python
#: loop's indexing, views and index tensors). The estimator predicts no device time for it.
GLUE_OP = "glue"

#: Dispatches one call of each op kind issues in Hugging Face's Llama (transformers 5.x, decode):
#: the attention's own glue (q/k/v views and transposes, the output's transpose and reshape,
#: cos/sin unsqueeze) rides on the attention; ``rmsnorm`` is HF's unfused LlamaRMSNorm (two
#: casts, pow, mean, add, rsqrt, two muls); a ``rope`` call rotates q or k (two slices, neg, cat,
#: two muls, add). A quantized linear (:class:`pis.executors.quantized.QuantLinear`) flattens x,
#: calls its kernel and reshapes back; fp8 also scales and casts x per token (abs, amax, float,
#: clamp, two divisions, the cast) before ``_scaled_mm``.
DISPATCHES_PER_CALL: dict[str, float] = {
    "gemm": 1, "gemm_2to4": 1, "attn_prefill": 11, "attn_decode": 11, "rope": 7, "rmsnorm": 8,
    "silu_mul": 2, "add": 1, "gather": 1, "scatter_add": 1, "kv_concat": 1, "topk": 1, GLUE_OP: 0,
    "gemm_w8": 3, "gemm_w4": 3, "gemm_fp8": 10,
}

#: Dispatches of one forward pass outside the op graph's groups: the rotary cos/sin tables, the
#: attention mask, the cache object and the output's slicing.
STEP_DISPATCHES: float = 19.0
