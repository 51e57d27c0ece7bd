"""Benches of the GEMMs with quantized weights (``gemm_w8``, ``gemm_w4``, ``gemm_fp8``).

Each times the kernel a quantized linear of :mod:`pis.executors.quantized` calls:

* ``gemm_w8``: ``torch._weight_int8pack_mm(x, W_int8[n, k], scales[n])``: int8 weights, one scale
  per output channel, activations in the profile's dtype.
* ``gemm_w4``: ``torch._weight_int4pack_mm`` (CUDA, bf16 tinygemm) or
  ``torch._weight_int4pack_mm_for_cpu``: 4-bit weights packed by torch's converter, a scale and a
  zero per ``group_size`` inputs of each output channel.
* ``gemm_fp8``: ``torch._scaled_mm`` of e4m3 operands with a scale per token and per channel,
  the activation's per-token scaling and cast timed with it (dynamic quantization, as
  vLLM's and torchao's fp8 linears run it). CUDA sm89+ only.

On the CPU each call reads another copy of the weights, so they come from DRAM as inside a
decoder (as :func:`pis.calibrate.ops.build_gemm` does for native weights); the CUDA timer flushes
L2 instead. A kernel this device or torch cannot run raises :class:`~pis.errors.Unsupported`.
"""

from __future__ import annotations

from typing import Callable

import torch

from pis.calibrate.ops import Bench, Shape, backend_prefix, rand_tensor
from pis.errors import Unsupported
from pis.executors.quantized import (E4M3_MAX, check_fp8, check_int4, fp8_mm, int4_mm, int8_mm, pack_int4,
                                     quantize_int4)

#: CPU: copies of a quantized weight rotated call by call fill at least this much memory,
#: several times any last-level cache, so that every call reads its weight from DRAM.
CPU_ROTATION_BYTES = 256 << 20
#: Most copies kept (small weights): enough to sweep the rotation bytes above.
MAX_COPIES = 64


def _rotation(first: torch.Tensor, nbytes: int) -> Callable[[], torch.Tensor]:
    """A function returning a different copy of a weight each call on the CPU (one on CUDA)."""
    if first.device.type != "cpu":
        return lambda: first
    n = min(MAX_COPIES, -(-CPU_ROTATION_BYTES // max(nbytes, 1)))
    copies = [first] + [first.clone() for _ in range(n - 1)]
    state = {"i": -1}

    def nxt() -> torch.Tensor:
        state["i"] = (state["i"] + 1) % len(copies)
        return copies[state["i"]]
    return nxt


def _first_call(name: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` once; a kernel that refuses these inputs raises :class:`Unsupported`."""
    try:
        fn()
    except (RuntimeError, NotImplementedError, TypeError) as err:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        raise Unsupported(f"{name}: {' '.join(str(err).split())[:120]}") from err


def build_gemm_w8(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """``x[m, k] @ W_int8[n, k].T * scales[n]`` (weight-only int8)."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise Unsupported(f"torch {torch.__version__} lacks _weight_int8pack_mm")
    m, n, k = int(s["m"]), int(s["n"]), int(s["k"])
    x = rand_tensor(m, k, dtype=dtype, device=device)
    scales = rand_tensor(n, dtype=dtype, device=device)
    weights = _rotation(torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device), n * k)
    _first_call("_weight_int8pack_mm", lambda: int8_mm(x, weights(), scales))
    return Bench(lambda: int8_mm(x, weights(), scales), backend_prefix(device) + "int8pack_mm")


def build_gemm_w4(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """``x[m, k]`` times 4-bit weights with a scale and zero per group of ``group_size`` along K."""
    m, n, k, group = int(s["m"]), int(s["n"]), int(s["k"]), int(s["group_size"])
    check_int4(device, dtype)
    x = rand_tensor(m, k, dtype=dtype, device=device)
    codes, scales_zeros = quantize_int4(rand_tensor(n, k, dtype=dtype, device=device), group)
    weights = _rotation(pack_int4(codes), n * k // 2)
    _first_call("int4pack_mm", lambda: int4_mm(x, weights(), group, scales_zeros))
    return Bench(lambda: int4_mm(x, weights(), group, scales_zeros), backend_prefix(device) + "int4pack_mm")


def build_gemm_fp8(s: Shape, dtype: torch.dtype, device: torch.device) -> Bench:
    """Per-token fp8 quantization of ``x`` then ``torch._scaled_mm`` with per-channel weight scales."""
    check_fp8(device, dtype)
    m, n, k = int(s["m"]), int(s["n"]), int(s["k"])
    x = rand_tensor(m, k, dtype=dtype, device=device)
    w = rand_tensor(n, k, dtype=dtype, device=device)
    w_scale = (w.abs().amax(dim=1).float() / E4M3_MAX)[None, :]
    w_t = (w.float() / w_scale.t()).to(torch.float8_e4m3fn).t()  # column-major, as _scaled_mm takes it
    _first_call("_scaled_mm", lambda: fp8_mm(x, w_t, w_scale))
    return Bench(lambda: fp8_mm(x, w_t, w_scale), "scaled_mm-rowwise")


QUANT_BUILDERS = {"gemm_w8": build_gemm_w8, "gemm_w4": build_gemm_w4, "gemm_fp8": build_gemm_fp8}
