"""Which device to calibrate, and the provenance metadata that describes it.

The metadata names the hardware and software, never the machine: no host names, user names
or paths. Datasheet peaks are given only for GPUs we know; elsewhere the simulator derives
its peaks from the measured rows (``peak_source`` absent).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from pis import __version__
from pis.errors import PisError

#: CLI dtype name -> torch dtype.
TORCH_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Peaks:
    """Datasheet peaks of one GPU model (dense, no structured sparsity)."""

    #: bf16/fp16 tensor-core FLOP/s (dense)
    half: float
    #: fp32 FLOP/s on the CUDA cores (torch runs fp32 matmuls without TF32 by default)
    fp32: float
    #: memory bytes/s
    bandwidth: float


#: Known GPUs: (substrings that must all occur in the lower-cased device name, peaks).
#: The first match wins, so more specific names come first.
_DATASHEET: tuple[tuple[tuple[str, ...], Peaks], ...] = (
    (("gh200",), Peaks(989e12, 67e12, 4.0e12)),
    (("h200",), Peaks(989e12, 67e12, 4.8e12)),
    (("h100", "pcie"), Peaks(756e12, 51e12, 2.0e12)),
    (("h100", "nvl"), Peaks(835e12, 60e12, 3.9e12)),
    (("h100",), Peaks(989e12, 67e12, 3.35e12)),  # SXM5 (reported as "H100 80GB HBM3")
    (("h800",), Peaks(989e12, 67e12, 3.35e12)),
    (("a100", "80gb", "pcie"), Peaks(312e12, 19.5e12, 1.935e12)),
    (("a100", "80gb"), Peaks(312e12, 19.5e12, 2.039e12)),
    (("a100",), Peaks(312e12, 19.5e12, 1.555e12)),  # 40 GB
    (("a800",), Peaks(312e12, 19.5e12, 2.039e12)),
    (("l40s",), Peaks(362e12, 91.6e12, 864e9)),
    (("l40",), Peaks(181e12, 90.5e12, 864e9)),
    (("l4",), Peaks(121e12, 30.3e12, 300e9)),
    (("a10g",), Peaks(70e12, 31.2e12, 600e9)),
    (("a10",), Peaks(125e12, 31.2e12, 600e9)),
    (("rtx 4090",), Peaks(165e12, 82.6e12, 1.008e12)),
    (("rtx 3090",), Peaks(71e12, 35.6e12, 936e9)),
    (("v100",), Peaks(125e12, 15.7e12, 900e9)),  # fp16 only (no bf16 tensor cores)
    (("t4",), Peaks(65e12, 8.1e12, 320e9)),
)


def default_dtype(device_kind: str) -> str:
    """bf16 on GPUs (what LLM inference runs), fp32 on CPUs (fast BLAS paths)."""
    return "bf16" if device_kind == "cuda" else "fp32"


def datasheet_peaks(device_name: str) -> Peaks | None:
    """Datasheet peaks for a GPU name as CUDA reports it, or None when unknown."""
    name = device_name.lower()
    for needles, peaks in _DATASHEET:
        if all(n in name for n in needles):
            return peaks
    return None


def resolve_device(spec: str) -> torch.device:
    """Parse ``cpu`` or ``cuda[:N]``; raise :class:`PisError` when it is unusable here."""
    text = spec.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            dev = torch.device(text)
        except RuntimeError:
            raise PisError(f"bad device {spec!r}: use cpu or cuda:N") from None
        if not torch.cuda.is_available():
            raise PisError(f"device {spec!r} requested but CUDA is not available "
                           f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise PisError(f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
        return torch.device("cuda", index)
    raise PisError(f"unknown device {spec!r}: use cpu or cuda:N")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else what the platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _driver_version() -> str | None:
    # pynvml ships as nvidia-ml-py in most CUDA images; without it the driver stays unknown.
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        return None


def device_meta(device: torch.device, dtype: str, timing_method: str) -> dict[str, Any]:
    """Provenance metadata (META keys of :mod:`pis.profiles.schema`) for a profile of ``device``."""
    meta: dict[str, Any] = {
        "device_kind": device.type,
        "dtype": dtype,
        "timing_method": timing_method,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "tool_version": __version__,
        "torch_version": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta.update(
            device_name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=int(props.multi_processor_count),
            memory_bytes=int(props.total_memory),
            cuda_version=torch.version.cuda,
        )
        driver = _driver_version()
        if driver:
            meta["driver_version"] = driver
        peaks = datasheet_peaks(props.name)
        if peaks is not None:
            meta.update(peak_flops=peaks.fp32 if dtype == "fp32" else peaks.half,
                        peak_bandwidth=peaks.bandwidth, peak_source="datasheet")
    else:
        meta["device_name"] = meta["cpu_model"]
        try:
            meta["memory_bytes"] = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            pass
    return meta


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA device, None for the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
