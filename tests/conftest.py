"""Shared fixtures: a SYNTHETIC latency profile built in memory from a known analytic model.

The profile is not a measurement: every latency is
``max(flops / (peak_flops * eff(shape)), bytes / (peak_bandwidth * beff(shape))) + dispatch``
with smooth efficiencies, so tests can compare the estimator against the analytic truth at
shapes that were never "measured". Its metadata says so (``timing_method``, ``notes``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import pytest

from pis import __version__
from pis.profiles.schema import OPS, SCHEMA_VERSION, op_bytes, op_flops
from pis.profiles.store import Profile, normalize_rows, write_profile

PEAK_FLOPS = 2.0e12      # FLOP/s
PEAK_BANDWIDTH = 1.0e11  # bytes/s
DISPATCH_US = 4.0        # per-call cost (inside CPU timings; the launch floor on "cuda")
DTYPE = "bf16"

GEMM_M = [2 ** i for i in range(13)]            # 1 .. 4096
GEMM_NK = [2 ** i for i in range(8, 15)]        # 256 .. 16384
NUMEL = [2 ** i for i in range(10, 27)]         # 1024 .. 67M
SEQ = [2 ** i for i in range(7, 14)]            # 128 .. 8192
SYNTHETIC_MEMORY_OPS = ("rmsnorm", "silu_mul", "rope", "add", "gather", "scatter_add")


def _f(x: object) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def true_latency_us(op: str, shape: Mapping[str, object], *, tile: int | None = None,
                    dispatch_us: float = DISPATCH_US) -> np.ndarray:
    """The analytic model the synthetic profile samples (vectorized)."""
    s = {k: _f(v) for k, v in shape.items()}
    if op == "overhead":
        return np.asarray(dispatch_us if dispatch_us else 1.0)
    if tile and op == "gemm":  # tile alignment: pay for N and K rounded up to the tile
        s["n"], s["k"] = np.ceil(s["n"] / tile) * tile, np.ceil(s["k"] / tile) * tile
    flops, nbytes = op_flops(op, s), op_bytes(op, s, DTYPE)
    if op in ("gemm", "topk"):
        m, n, k = s["m"], s["n"], s["k"]
        eff = 0.9 * m / (m + 24.0) * n / (n + 96.0) * k / (k + 48.0)
        beff = 0.9 * n * k / (n * k + 65536.0)
    elif op.startswith("attn"):
        bh = s["batch"] * s["heads"]
        eff = 0.6 * bh / (bh + 8.0) * s["q_len"] / (s["q_len"] + 16.0) * s["kv_len"] / (s["kv_len"] + 64.0)
        beff = 0.8 * s["kv_len"] / (s["kv_len"] + 256.0)
    else:
        eff = np.ones_like(flops)
        beff = 0.9 * s["numel"] / (s["numel"] + 16384.0)
    secs = np.maximum(flops / (PEAK_FLOPS * eff), nbytes / (PEAK_BANDWIDTH * beff))
    return secs * 1e6 + dispatch_us


def _shapes() -> dict[str, list[dict[str, int]]]:
    out: dict[str, list[dict[str, int]]] = {}
    out["gemm"] = [dict(m=m, n=n, k=k) for m, n, k in itertools.product(GEMM_M, GEMM_NK, GEMM_NK)]
    out["attn_prefill"] = [dict(batch=b, q_len=s, kv_len=s, heads=h, kv_heads=8, head_dim=d, causal=1)
                           for d, b, s, h in itertools.product((64, 128), (1, 2, 4, 8, 16), SEQ, (8, 16, 32))]
    out["attn_decode"] = [dict(batch=b, q_len=1, kv_len=c, heads=h, kv_heads=g, head_dim=d, causal=0)
                          for d, b, c, h, g in itertools.product((64, 128), (1, 4, 16, 64), SEQ + [16384, 32768],
                                                                 (8, 32), (2, 8))]
    for op in SYNTHETIC_MEMORY_OPS:
        out[op] = [dict(numel=x) for x in NUMEL]
    out["topk"] = [dict(m=m, n=n, k=k) for m, n, k in itertools.product((1, 64, 1024), (64, 1024, 8192), (8, 32))]
    out["overhead"] = [{}]
    return out


@dataclass
class Synthetic:
    """A synthetic profile and the analytic model that generated it."""

    profile: Profile
    truth: Callable[..., np.ndarray]


def make_synthetic(device_kind: str = "cpu", tile: int | None = None, with_peaks: bool = True,
                   drop_ops: tuple[str, ...] = (), scale: float = 1.0) -> Synthetic:
    """Build a synthetic profile (see module docstring); ``scale`` multiplies every latency."""
    # On "cuda" the kernel timings exclude the launch, which becomes the overhead row only.
    dispatch = DISPATCH_US if device_kind == "cpu" else 0.0

    def truth(op: str, shape: Mapping[str, object]) -> np.ndarray:
        if op == "overhead":
            return np.asarray(DISPATCH_US * scale)
        return true_latency_us(op, shape, tile=tile, dispatch_us=dispatch) * scale

    frames = []
    for op, shapes in _shapes().items():
        if op in drop_ops:
            continue
        df = pd.DataFrame(shapes if shapes != [{}] else [{"m": None}])
        cols = {c: df[c].to_numpy() for c in OPS[op].columns}
        t = np.broadcast_to(truth(op, cols), (len(df),))
        df["op"], df["dtype"], df["median_us"] = op, DTYPE, t
        df["p10_us"], df["p90_us"], df["repeats"] = t * 0.97, t * 1.04, 25
        df["flops"] = np.broadcast_to(op_flops(op, cols), (len(df),)) if cols else 0.0
        df["bytes"] = np.broadcast_to(op_bytes(op, cols, DTYPE), (len(df),)) if cols else 0.0
        df["status"], df["backend"] = "ok", "synthetic"
        frames.append(df)
    # A 2:4 GEMM "skipped" as on a device without sparse tensor cores.
    frames.append(pd.DataFrame([dict(op="gemm_2to4", m=64, n=4096, k=4096, dtype=DTYPE,
                                     status="skipped_unsupported", backend="synthetic")]))
    rows = normalize_rows(pd.concat(frames, ignore_index=True))
    meta = {
        "schema_version": SCHEMA_VERSION, "device_name": f"synthetic-{device_kind}",
        "device_kind": device_kind, "dtype": DTYPE,
        "timing_method": "synthetic: analytic latency model, NOT measured",
        "grid_name": "synthetic-test", "created": "2025-01-01T00:00:00+00:00",
        "tool_version": __version__, "complete": True,
        "notes": "SYNTHETIC profile generated by tests/conftest.py for tests only",
    }
    if with_peaks:
        meta.update(peak_flops=PEAK_FLOPS, peak_bandwidth=PEAK_BANDWIDTH, peak_source="synthetic model")
    return Synthetic(Profile(rows=rows, meta=meta), truth)


@pytest.fixture(scope="session")
def synthetic() -> Synthetic:
    """The default synthetic CPU profile (do not mutate; use ``make_synthetic`` for variants)."""
    return make_synthetic()


@pytest.fixture(name="make_synthetic")
def make_synthetic_fixture() -> Callable[..., Synthetic]:
    """Factory for synthetic profile variants (device kind, tile alignment, peaks, ops)."""
    return make_synthetic


@pytest.fixture()
def synthetic_file(tmp_path, synthetic) -> str:
    """The default synthetic profile written to a Parquet file."""
    path = tmp_path / "synthetic.parquet"
    write_profile(synthetic.profile, path)
    return str(path)


NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pareto_analysis.ipynb"


@pytest.fixture()
def run_notebook(monkeypatch) -> Callable[[str | None], str]:
    """Runs the analysis notebook headless with ``PIS_PROFILE`` set to a profile (None: unset,
    the shipped default); returns the text of its outputs and fails on any error output."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")

    def run(profile: str | None) -> str:
        if profile is None:
            monkeypatch.delenv("PIS_PROFILE", raising=False)
        else:
            monkeypatch.setenv("PIS_PROFILE", profile)
        monkeypatch.delenv("PIS_QUALITY", raising=False)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
        text = []
        for cell in nb.cells:
            for out in cell.get("outputs", []):
                assert out.get("output_type") != "error"
                text.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
        return "\n".join(text)

    return run


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory) -> None:
    """Simulations of profile files keep derived state in a cache folder: a private one here."""
    import os

    os.environ["PIS_CACHE_DIR"] = str(tmp_path_factory.mktemp("pis-cache"))
