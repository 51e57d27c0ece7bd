"""Running a suite: build each configuration's real model, time it, and predict it.

For every configuration the real model (random weights) is built on the device, one prefill
forward (TTFT) or one decode step (TPOT) is timed (median of repeats; CUDA events on a GPU),
and the same design point is predicted from a profile of the same device.
``error_pct = (predicted − measured) / measured · 100``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from pis.calibrate.device import TORCH_DTYPES
from pis.calibrate.timing import TimingConfig, measure_step
from pis.errors import PisError, Unsupported
from pis.executors import ModelUnderTest, build_model
from pis.executors.hf import HfModel, fuse_kernels
from pis.simulator.api import Simulator
from pis.simulator.estimator import Estimator
from pis.validate.report import REPORT_COLUMNS, error_pct
from pis.validate.suites import Config

#: How hard each suite measures one configuration.
EFFORT: dict[str, TimingConfig] = {
    "tiny": TimingConfig(warmup=1, min_repeats=3, max_repeats=5, target_s=0.1),
    "quick": TimingConfig(warmup=2, min_repeats=5, max_repeats=20, target_s=1.0, flush_cache=True),
    "full": TimingConfig(warmup=3, min_repeats=10, max_repeats=50, target_s=2.0, flush_cache=True),
}


def predict(sim: Simulator, cfg: Config) -> tuple[float, bool, float]:
    """Predicted latency (ms) of ``cfg``, whether any op was extrapolated, and the in-model
    factor the prediction includes (latency / factor is the plain op sum)."""
    cols = sim.columns([cfg.spec], [cfg.method], [cfg.sparsity], [cfg.phase], [cfg.batch], [cfg.seq_len],
                       [max(cfg.context, 1)], cfg.options())
    return float(cols["latency_ms"][0]), bool(cols["extrapolated"][0]), float(cols["in_model_factor"][0])


def check_profile_matches(est: Estimator, device: torch.device, dtype: str) -> list[str]:
    """Raise when the profile is of another kind of device; return warnings (e.g. dtype)."""
    kind = est.device_kind or "unknown"
    if kind in ("cuda", "gpu", "cpu") and (kind == "cpu") != (device.type == "cpu"):
        raise PisError(f"the profile was measured on a {kind} device ({est.name}) but validation "
                       f"runs on {device}; calibrate this device or pass --calibrate")
    warnings = []
    if est.dtype != dtype:
        warnings.append(f"profile dtype {est.dtype} differs from the validation dtype {dtype}: "
                        "errors include the dtype difference")
    return warnings


def run_configs(configs: list[Config], sim: Simulator, device: torch.device, dtype: str,
                effort: TimingConfig, progress: Callable[[Iterable], Iterator] | None = None) -> pd.DataFrame:
    """Measure and predict every configuration; one report row each (skips are rows too)."""
    rows = []
    model: ModelUnderTest | None = None
    key = None
    it = progress(configs) if progress else configs
    for cfg in it:
        row = dict(config=cfg.label, model=cfg.spec.name, layers=cfg.spec.layers, backend=cfg.backend,
                   method=cfg.method, weights=cfg.weights, granularity=cfg.granularity, sparsity=cfg.sparsity,
                   phase=cfg.phase, batch=cfg.batch, seq_len=cfg.seq_len, context_len=cfg.context,
                   measured_ms=np.nan, measured_p10_ms=np.nan, measured_p90_ms=np.nan, repeats=0,
                   predicted_ms=np.nan, error_pct=np.nan, predicted_ops_ms=np.nan, ops_error_pct=np.nan,
                   in_model_factor=np.nan, extrapolated=False, status="ok",
                   device=str(device), dtype=dtype, rounds=1, round_spread_pct=0.0,
                   machine_drift_pct=np.nan, drift_adjusted_error_pct=np.nan, measured_speedup=np.nan,
                   predicted_speedup=np.nan, speedup_error_pct=np.nan)
        try:
            row["predicted_ms"], row["extrapolated"], row["in_model_factor"] = predict(sim, cfg)
            row["predicted_ops_ms"] = row["predicted_ms"] / row["in_model_factor"]
        except PisError as err:
            row["status"] = f"no prediction: {err}"
        if row["status"] == "ok":
            try:
                if cfg.model_key != key:
                    model, key = None, None
                    _free(device)
                    model = build_model(cfg.spec, cfg.method, cfg.sparsity, device, TORCH_DTYPES[dtype],
                                        cfg.options(), reference_dense=cfg.reference)
                    if cfg.execution == "graph" and isinstance(model, HfModel):
                        fuse_kernels(model.model, model.config)  # the study's fused RMSNorm (and RoPE)
                    key = cfg.model_key
                if cfg.execution == "graph":
                    step = model.graph_step(cfg.phase, cfg.batch, cfg.seq_len, cfg.context)
                else:
                    step = model.step(cfg.phase, cfg.batch, cfg.seq_len, cfg.context)
                med, p10, p90, n = measure_step(step, device, effort)
                row.update(measured_ms=med, measured_p10_ms=p10, measured_p90_ms=p90, repeats=n,
                           error_pct=error_pct(row["predicted_ms"], med),
                           ops_error_pct=error_pct(row["predicted_ops_ms"], med))
                del step
            except Unsupported as err:
                row["status"] = f"skipped: {err}"
            except torch.cuda.OutOfMemoryError:
                row["status"] = "skipped: out of memory"
                model, key = None, None
                _free(device)
            except (RuntimeError, ValueError, TypeError, NotImplementedError) as err:
                # One configuration that breaks (a kernel this torch lacks, say) must not
                # lose the rest of the report; the row says what happened.
                row["status"] = "error: " + " ".join(str(err).split())[:160]
                model, key = None, None
                _free(device)
        rows.append(row)
    del model
    _free(device)
    return pd.DataFrame(rows, columns=list(REPORT_COLUMNS))


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
