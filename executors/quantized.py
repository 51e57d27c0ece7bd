"""Linear layers with quantized weights, and the kernels they call.

The weight formats of ``--weights`` as real modules: ``int8`` (weight-only, one scale per output
channel: ``torch._weight_int8pack_mm``), ``int4`` (weight-only, a scale and a zero per group of
``group_size`` inputs, or the largest group dividing a smaller K, packed for
``torch._weight_int4pack_mm`` on CUDA or its CPU twin) and
``fp8`` (e4m3 weights scaled per channel, activations scaled per token on the fly,
``torch._scaled_mm``; CUDA sm89+). These are the operators torchao's and gpt-fast's
weight-only linears dispatch to; calling them directly keeps the executors free of a
dependency whose compiled parts follow torch releases. Calibration's benches
(:mod:`pis.calibrate.quant_benches`) call the same functions, so a profile row and a validated
model time one kernel.

Weights are quantized from the layer's own weights (round to nearest), so a quantized model
computes what its native twin does, up to quantization error.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from pis.errors import Unsupported

#: Inner K tiles of torch's 4-bit packing (its converters accept 2, 4 or 8).
INT4_INNER_K_TILES = 8
#: Largest value of float8 e4m3.
E4M3_MAX = 448.0


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of ``w[n, k]``: (int8 weights, scales[n])."""
    scale = w.detach().abs().amax(dim=1).float().clamp(min=1e-12) / 127.0
    q = torch.round(w.detach().float() / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale.to(w.dtype)


def int8_mm(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``x[m, k] @ (q[n, k] * scales[n, None]).T`` by torch's int8 weight-only kernel."""
    return torch._weight_int8pack_mm(x, q, scales)


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric groupwise 4-bit of ``w[n, k]`` in the convention of torch's int4 kernels
    (``w ≈ (q - 8) · scale + zero`` per group of ``group_size`` along K): (codes[n, k] as
    int32 in 0..15, scales_and_zeros[k / group_size, n, 2])."""
    n, k = w.shape
    if k % group_size:
        raise Unsupported(f"int4: K={k} is not a multiple of the group size {group_size}")
    g = w.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    zero = lo + 8.0 * scale
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(w.dtype)
    return q, scales_zeros


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Codes ``q[n, k]`` (int32, 0..15) packed by torch's converter for this device."""
    if q.device.type == "cpu":
        return torch._convert_weight_to_int4pack_for_cpu(q, INT4_INNER_K_TILES)
    nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)  # two codes per byte, as CUDA's converter takes
    return torch._convert_weight_to_int4pack(nibbles, INT4_INNER_K_TILES)


def int4_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_zeros: torch.Tensor) -> torch.Tensor:
    """``x`` times packed 4-bit weights by torch's kernel for ``x``'s device."""
    if x.device.type == "cpu":
        return torch._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_zeros)
    return torch._weight_int4pack_mm(x, packed, group_size, scales_zeros)


def check_int4(device: torch.device, dtype: torch.dtype) -> None:
    """Raise :class:`Unsupported` where torch's 4-bit kernels cannot run."""
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        if cap < (8, 0) or dtype != torch.bfloat16:
            raise Unsupported("the 4-bit CUDA kernel (tinygemm) needs an sm80+ GPU and bf16")
        names = ("_convert_weight_to_int4pack", "_weight_int4pack_mm")
    else:
        names = ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu")
    if not all(hasattr(torch, f) for f in names):
        raise Unsupported(f"torch {torch.__version__} lacks {names[1]}")


def check_fp8(device: torch.device, dtype: torch.dtype) -> None:
    """Raise :class:`Unsupported` where fp8 GEMMs cannot run."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise Unsupported("fp8 GEMMs need a CUDA sm89+ GPU")
    if dtype == torch.float32 or not hasattr(torch, "float8_e4m3fn"):
        raise Unsupported("fp8 GEMMs take half-precision activations")


def fp8_mm(x: torch.Tensor, w_t: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Per-token fp8 quantization of ``x[m, k]`` and ``torch._scaled_mm`` with the column-major
    e4m3 weights ``w_t[k, n]`` and their per-channel scales ``w_scale[1, n]``."""
    x_scale = x.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / E4M3_MAX
    xq = (x / x_scale).to(torch.float8_e4m3fn)
    return torch._scaled_mm(xq, w_t, scale_a=x_scale, scale_b=w_scale, out_dtype=x.dtype)


class QuantLinear(nn.Module):
    """``nn.Linear`` (no bias) whose weights are int8, int4 or fp8; same inputs and outputs."""

    def __init__(self, linear: nn.Linear, weights: str, group_size: int = 128) -> None:
        super().__init__()
        w = linear.weight.detach()
        self.out_features, self.in_features = w.shape
        self.weights, self.group_size = weights, int(group_size)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        if weights == "int8":
            q, scales = quantize_int8(w)
            self.register_buffer("q", q)
            self.register_buffer("scales", scales)
            self._mm: Callable[[torch.Tensor], torch.Tensor] = lambda x: int8_mm(x, self.q, self.scales)
        elif weights == "int4":
            check_int4(w.device, w.dtype)
            self.group_size = math.gcd(self.in_features, self.group_size)  # a K the group does not divide
            q, scales_zeros = quantize_int4(w, self.group_size)
            self.register_buffer("packed", pack_int4(q))
            self.register_buffer("scales_zeros", scales_zeros)
            self._mm = lambda x: int4_mm(x, self.packed, self.group_size, self.scales_zeros)
        elif weights == "fp8":
            check_fp8(w.device, w.dtype)
            scale = (w.abs().amax(dim=1).float().clamp(min=1e-12) / E4M3_MAX)
            self.register_buffer("w_t", (w.float() / scale[:, None]).to(torch.float8_e4m3fn).t())
            self.register_buffer("w_scale", scale[None, :])
            self._mm = lambda x: fp8_mm(x, self.w_t, self.w_scale)
        else:
            raise ValueError(f"unknown weight format {weights!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._mm(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weights={self.weights}"


def quantize_linears(module: nn.Module, weights: str, group_size: int = 128) -> int:
    """Replace every dense ``nn.Linear`` inside ``module`` by a :class:`QuantLinear` in place
    (2:4 weights stay: no kernel takes them quantized); returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and child.weight.layout == torch.strided \
                and type(child.weight.data) is torch.Tensor:
            setattr(module, name, QuantLinear(child, weights, group_size))
            replaced += 1
        else:
            replaced += quantize_linears(child, weights, group_size)
    return replaced
