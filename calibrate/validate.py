"""End-to-end fidelity check: time real pruned models and compare with the simulator.

For every configuration of a suite the real model (random weights) is built on the device,
one prefill forward (TTFT) or one decode step (TPOT) is timed — median of repeats, CUDA events
on GPU — and the same design point is predicted by :func:`pis.simulator.sweep.simulate_point`
from a profile of the same device. ``error_pct = (predicted − measured) / measured · 100``.

Suites: ``tiny`` (CI, seconds), ``quick`` (about a dozen configurations, minutes on a CPU),
``full`` (every family, both phases, several batch sizes and lengths). CPU suites use a small
Llama-shaped model so that they run on a couple of cores; GPU suites use the Llama-3.1-8B
shapes with fewer layers (latency is additive over layers; the reported model says how many).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import torch

from pis.calibrate.validate_models import ModelUnderTest, Unsupported, build_model
from pis.errors import PisError
from pis.simulator.estimator import Estimator
from pis.simulator.models import PRESETS, ModelSpec
from pis.calibrate.timing import TimingConfig, measure_runner
from pis.simulator.pruning import PruneOptions
from pis.simulator.sweep import simulate_point

SUITES: tuple[str, ...] = ("tiny", "quick", "full")

#: Columns of the validation report, in order.
REPORT_COLUMNS: tuple[str, ...] = (
    "config", "model", "layers", "backend", "method", "granularity", "sparsity", "phase", "batch",
    "seq_len", "context_len", "measured_ms", "measured_p10_ms", "measured_p90_ms", "repeats",
    "predicted_ms", "error_pct", "predicted_ops_ms", "ops_error_pct", "context_factor",
    "extrapolated", "status", "device", "dtype", "rounds", "round_spread_pct",
    "machine_drift_pct", "drift_adjusted_error_pct", "measured_speedup", "predicted_speedup",
    "speedup_error_pct",
)
#: A pruned configuration's dense counterpart: the same model and executor at the same point.
SPEEDUP_KEY: tuple[str, ...] = ("model", "layers", "backend", "phase", "batch", "seq_len", "context_len")

#: Small Llama-shaped models that run quickly on two CPU cores.
CPU_TINY = ModelSpec("cpu-tiny", hidden=256, ffn=704, layers=2, heads=4, kv_heads=2, head_dim=64, vocab=2048)
CPU_SMALL = ModelSpec("cpu-small", hidden=1024, ffn=2816, layers=4, heads=16, kv_heads=4, head_dim=64,
                      vocab=8192)


def gpu_model(layers: int) -> ModelSpec:
    """Llama-3.1-8B shapes with ``layers`` decoder layers."""
    base = PRESETS["llama-3.1-8b"]
    return base.with_options(name=f"llama-3.1-8b-{layers}L", layers=layers)


@dataclass(frozen=True)
class Config:
    """One validated design point."""

    spec: ModelSpec
    method: str
    sparsity: float
    phase: str
    batch: int
    seq_len: int
    context: int
    granularity: str = "layer"
    #: run ``dense`` on the reference decoder (cross-check with HF dense)
    reference: bool = False

    @property
    def backend(self) -> str:
        from pis.calibrate.reference_decoder import ROUTED_FAMILIES
        return "reference" if self.reference or self.method in ROUTED_FAMILIES else "hf"

    @property
    def label(self) -> str:
        name = self.method + ("[ref]" if self.reference else "")
        if self.granularity != "layer":
            name += f"/{self.granularity}"
        shape = f"S={self.seq_len}" if self.phase == "prefill" else f"C={self.context}"
        return f"{name} s={self.sparsity:g} {self.phase} B={self.batch} {shape}"

    @property
    def model_key(self) -> tuple:
        return (self.spec, self.method, self.sparsity, self.granularity, self.reference)

    def options(self) -> PruneOptions:
        # HF decode appends to a DynamicCache (a copy per layer); the reference decoder
        # preallocates its caches, so each executor is predicted with its own discipline.
        kv = "preallocated" if self.backend == "reference" else "concat"
        return PruneOptions(granularity=self.granularity, kv_cache=kv)


def _points(spec: ModelSpec, method: str, sparsity: float, phase: str,
            shapes: Iterable[tuple[int, int]], **kw) -> list[Config]:
    # shapes: (batch, seq_len) in prefill, (batch, context) in decode
    out = []
    for b, n in shapes:
        seq, ctx = (n, 0) if phase == "prefill" else (1, n)
        out.append(Config(spec, method, sparsity, phase, b, seq, ctx, **kw))
    return out


def _suite_cpu(suite: str) -> list[Config]:
    if suite == "tiny":
        m = CPU_TINY
        return (_points(m, "dense", 0.0, "prefill", [(1, 64)])
                + _points(m, "static-width", 0.5, "decode", [(2, 128)])
                + _points(m, "dynamic-depth", 0.5, "prefill", [(2, 64)]))
    m = CPU_SMALL
    if suite == "quick":
        pre, dec = [(1, 256)], [(4, 512)]
        cfgs = (_points(m, "dense", 0.0, "prefill", pre) + _points(m, "dense", 0.0, "decode", dec)
                + _points(m, "dense", 0.0, "prefill", pre, reference=True)
                + _points(m, "static-depth", 0.5, "prefill", pre)
                + _points(m, "static-width", 0.5, "prefill", pre) + _points(m, "static-width", 0.5, "decode", dec)
                + _points(m, "static-width-hidden", 0.25, "prefill", pre)
                + _points(m, "low-rank", 0.5, "prefill", pre)
                + _points(m, "unstructured", 0.5, "decode", dec)
                + _points(m, "dynamic-depth", 0.5, "prefill", pre) + _points(m, "dynamic-depth", 0.5, "decode", dec)
                + _points(m, "sparse-attention", 0.5, "prefill", [(1, 512)])
                + _points(m, "sparse-attention", 0.75, "decode", [(4, 2048)])
                + _points(m, "dynamic-width", 0.5, "prefill", pre))
        return cfgs
    pre, dec = [(1, 128), (1, 512), (4, 256)], [(1, 1024), (8, 512), (4, 2048)]
    cfgs = []
    for method, s, kw in _FULL_FAMILIES:
        cfgs += _points(m, method, s, "prefill", pre, **kw) + _points(m, method, s, "decode", dec, **kw)
    # Hugging Face decode either side of the allocation cliff (25 and 38 MB K/V cache per layer
    # against glibc's 32 MiB mmap threshold), at points the calibration grid does not hold.
    for method, s in (("dense", 0.0), ("static-depth", 0.5), ("static-width", 0.5), ("low-rank", 0.5)):
        cfgs += _points(m, method, s, "decode", [(8, 3072), (12, 3072)])
    return cfgs


def _suite_gpu(suite: str) -> list[Config]:
    if suite == "tiny":
        m = gpu_model(2)
        return (_points(m, "dense", 0.0, "prefill", [(1, 512)])
                + _points(m, "static-width", 0.5, "decode", [(8, 2048)])
                + _points(m, "dynamic-depth", 0.5, "prefill", [(1, 512)]))
    m = gpu_model(4)
    if suite == "quick":
        pre, dec = [(1, 2048)], [(16, 4096)]
        return (_points(m, "dense", 0.0, "prefill", pre) + _points(m, "dense", 0.0, "decode", dec)
                + _points(m, "dense", 0.0, "prefill", pre, reference=True)
                + _points(m, "static-depth", 0.5, "prefill", pre)
                + _points(m, "static-width", 0.5, "prefill", pre) + _points(m, "static-width", 0.5, "decode", dec)
                + _points(m, "low-rank", 0.5, "prefill", pre)
                + _points(m, "semi-structured", 0.5, "prefill", pre)
                + _points(m, "dynamic-depth", 0.5, "prefill", pre) + _points(m, "dynamic-depth", 0.5, "decode", dec)
                + _points(m, "sparse-attention", 0.75, "decode", [(16, 8192)])
                + _points(m, "dynamic-width", 0.5, "prefill", pre))
    pre, dec = [(1, 512), (1, 2048), (8, 1024)], [(1, 4096), (16, 2048), (64, 4096)]
    cfgs = []
    for method, s, kw in _FULL_FAMILIES + [("semi-structured", 0.5, {})]:
        cfgs += _points(m, method, s, "prefill", pre, **kw) + _points(m, method, s, "decode", dec, **kw)
    return cfgs


#: (method, sparsity, Config options) of the full suites.
_FULL_FAMILIES: list[tuple[str, float, dict]] = [
    ("dense", 0.0, {}), ("dense", 0.0, {"reference": True}),
    ("static-depth", 0.5, {}), ("static-depth", 0.25, {"granularity": "sublayer"}),
    ("static-width", 0.5, {}), ("static-width-hidden", 0.25, {}), ("low-rank", 0.5, {}),
    ("unstructured", 0.5, {}), ("dynamic-depth", 0.5, {}), ("sparse-attention", 0.75, {}),
    ("dynamic-width", 0.5, {}),
]


def suite_configs(suite: str, device: torch.device) -> list[Config]:
    """The configurations of ``suite`` for a CPU or CUDA ``device``."""
    if suite not in SUITES:
        raise PisError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    return _suite_gpu(suite) if device.type == "cuda" else _suite_cpu(suite)


def suite_models(configs: Iterable[Config]) -> list[ModelSpec]:
    """The distinct model shapes a list of configurations runs."""
    return list(dict.fromkeys(c.spec for c in configs))


# --- measuring ---------------------------------------------------------------------------------

EFFORT: dict[str, TimingConfig] = {
    "tiny": TimingConfig(warmup=1, min_repeats=3, max_repeats=5, target_s=0.1),
    "quick": TimingConfig(warmup=2, min_repeats=5, max_repeats=20, target_s=1.0, flush_cache=True),
    "full": TimingConfig(warmup=3, min_repeats=10, max_repeats=50, target_s=2.0, flush_cache=True),
}



# --- predicting and running ------------------------------------------------------------------

def predict(est: Estimator, cfg: Config) -> tuple[float, bool, float]:
    """Predicted latency (ms) of ``cfg``, whether any op was extrapolated, and the in-context
    factor the prediction includes (latency / factor is the plain op sum)."""
    row = simulate_point(est, cfg.spec, cfg.method, cfg.sparsity, cfg.phase, cfg.batch,
                         cfg.seq_len, max(cfg.context, 1), cfg.options())
    return float(row["latency_ms"]), bool(row["extrapolated"]), float(row["context_factor"])


def check_profile(est: Estimator, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Raise when the profile is of another kind of device; return warnings (e.g. dtype)."""
    kind = est.device_kind or "unknown"
    if kind in ("cuda", "gpu", "cpu") and (kind == "cpu") != (device.type == "cpu"):
        raise PisError(f"the profile was measured on a {kind} device ({est.name}) but validation "
                       f"runs on {device}; calibrate this device or pass --calibrate")
    warnings = []
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if est.dtype != name:
        warnings.append(f"profile dtype {est.dtype} differs from the validation dtype {name}: "
                        "errors include the dtype difference")
    return warnings


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU, bf16 on CUDA."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def error_pct(predicted, measured):
    """(predicted - measured) / measured x 100 (scalars or arrays)."""
    return (predicted - measured) / measured * 100.0


def run_configs(configs: list[Config], est: Estimator, device: torch.device, dtype: torch.dtype,
                effort: TimingConfig, progress: Callable[[Iterable], Iterator] | None = None) -> pd.DataFrame:
    """Measure and predict every configuration; one report row each (skips are rows too)."""
    rows = []
    model: ModelUnderTest | None = None
    key = None
    dname = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    it = progress(configs) if progress else configs
    for cfg in it:
        row = dict(config=cfg.label, model=cfg.spec.name, layers=cfg.spec.layers, backend=cfg.backend,
                   method=cfg.method, granularity=cfg.granularity, sparsity=cfg.sparsity,
                   phase=cfg.phase, batch=cfg.batch, seq_len=cfg.seq_len, context_len=cfg.context,
                   measured_ms=np.nan, measured_p10_ms=np.nan, measured_p90_ms=np.nan, repeats=0,
                   predicted_ms=np.nan, error_pct=np.nan, predicted_ops_ms=np.nan, ops_error_pct=np.nan,
                   context_factor=np.nan, extrapolated=False, status="ok",
                   device=str(device), dtype=dname, rounds=1, round_spread_pct=0.0,
                   machine_drift_pct=np.nan, drift_adjusted_error_pct=np.nan, measured_speedup=np.nan,
                   predicted_speedup=np.nan, speedup_error_pct=np.nan)
        try:
            row["predicted_ms"], row["extrapolated"], row["context_factor"] = predict(est, cfg)
            row["predicted_ops_ms"] = row["predicted_ms"] / row["context_factor"]
        except PisError as err:
            row["status"] = f"no prediction: {err}"
        if row["status"] == "ok":
            try:
                if cfg.model_key != key:
                    model, key = None, None
                    _free(device)
                    model = build_model(cfg.spec, cfg.method, cfg.sparsity, device, dtype,
                                        cfg.options(), reference_dense=cfg.reference)
                    key = cfg.model_key
                runner = model.runner(cfg.phase, cfg.batch, cfg.seq_len, cfg.context)
                med, p10, p90, n = measure_runner(runner, device, effort)
                row.update(measured_ms=med, measured_p10_ms=p10, measured_p90_ms=p90, repeats=n,
                           error_pct=error_pct(row["predicted_ms"], med),
                           ops_error_pct=error_pct(row["predicted_ops_ms"], med))
                del runner
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


def combine_rounds(reports: list[pd.DataFrame]) -> pd.DataFrame:
    """One report from several rounds over the same configurations.

    Each configuration's measured_ms is the median of its rounds' medians, so a minute in which
    a shared machine ran slow moves one round, not the figure; ``round_spread_pct`` is
    (max - min) / median of the rounds, the drift a single round would have carried. A
    configuration that was not measured in every round keeps the first round's row.
    """
    first = reports[0].reset_index(drop=True)
    if len(reports) == 1:
        return first
    out = first.copy()
    meds = np.column_stack([r["measured_ms"].to_numpy(dtype=float) for r in reports])
    ok = np.column_stack([(r["status"] == "ok").to_numpy() for r in reports]).all(axis=1)
    med = np.median(meds, axis=1)
    out.loc[ok, "measured_ms"] = med[ok]
    out.loc[ok, "measured_p10_ms"] = np.min([r["measured_p10_ms"] for r in reports], axis=0)[ok]
    out.loc[ok, "measured_p90_ms"] = np.max([r["measured_p90_ms"] for r in reports], axis=0)[ok]
    out.loc[ok, "repeats"] = np.sum([r["repeats"] for r in reports], axis=0)[ok]
    out.loc[ok, "rounds"] = len(reports)
    out.loc[ok, "round_spread_pct"] = ((meds.max(axis=1) - meds.min(axis=1)) / med * 100.0)[ok]
    m = out.loc[ok, "measured_ms"]
    out.loc[ok, "error_pct"] = error_pct(out.loc[ok, "predicted_ms"], m)
    out.loc[ok, "ops_error_pct"] = error_pct(out.loc[ok, "predicted_ops_ms"], m)
    return with_drift(out, np.median([r["machine_drift_pct"].to_numpy(dtype=float) for r in reports], axis=0))


def with_drift(report: pd.DataFrame, drift_pct: "float | np.ndarray") -> pd.DataFrame:
    """``report`` with ``machine_drift_pct`` set and ``drift_adjusted_error_pct`` computed.

    The adjusted error scores the prediction scaled by the machine's drift since the profile
    was measured (:mod:`pis.calibrate.drift`): how wrong the simulator would be on a machine
    as fast as at calibration. A diagnostic only; ``error_pct`` stays the headline.
    """
    out = report.copy()
    out["machine_drift_pct"] = drift_pct
    out["drift_adjusted_error_pct"] = error_pct(out["predicted_ms"] * (1.0 + out["machine_drift_pct"] / 100.0),
                                                out["measured_ms"])
    return out


def with_speedups(report: pd.DataFrame) -> pd.DataFrame:
    """``report`` with each pruned configuration's speedup over its dense counterpart
    (:data:`SPEEDUP_KEY`), measured and predicted, and ``speedup_error_pct`` between them.

    This is the figure a pruning study reads. A common error of the absolute level (the machine
    running slower than at calibration, the in-context factor's own scatter) cancels in it, so
    it shows how well the op graph and the in-context model carry from dense to pruned. Rows
    without a measured dense counterpart, and the dense rows themselves, stay NaN.
    """
    out = report.copy()
    key = list(SPEEDUP_KEY)
    ok = out["status"] == "ok"
    dense = (out[ok & (out["method"] == "dense")].drop_duplicates(key).set_index(key)
             [["measured_ms", "predicted_ms"]].add_suffix("_dense"))
    both = out.join(dense, on=key)
    pruned = ok & (out["method"] != "dense") & both["measured_ms_dense"].notna()
    out["measured_speedup"] = (both["measured_ms_dense"] / out["measured_ms"]).where(pruned)
    out["predicted_speedup"] = (both["predicted_ms_dense"] / out["predicted_ms"]).where(pruned)
    out["speedup_error_pct"] = error_pct(out["predicted_speedup"], out["measured_speedup"])
    return out


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def summarize(report: pd.DataFrame) -> pd.DataFrame:
    """Median and max |error| per family and phase, plus an overall row (ok rows only).

    ``*_abs_error_pct`` score the prediction (the op sum in context); ``ops_*`` score the
    plain op sum, so the report shows what the factor contributes; ``speedup_*`` score the
    predicted speedup over dense (:func:`with_speedups`; NaN for dense and without one).
    """
    ok = report[report["status"] == "ok"].copy()
    ok["abs_error_pct"] = ok["error_pct"].abs()
    ok["abs_ops_error_pct"] = ok["ops_error_pct"].abs()
    ok["abs_speedup_error_pct"] = ok.get("speedup_error_pct", pd.Series(np.nan, index=ok.index)).abs()
    cols = ["method", "phase", "n", "median_abs_error_pct", "max_abs_error_pct",
            "ops_median_abs_error_pct", "ops_max_abs_error_pct",
            "speedup_median_abs_error_pct", "speedup_max_abs_error_pct"]
    if ok.empty:
        return pd.DataFrame(columns=cols)

    def stats(df: pd.DataFrame) -> dict:
        return {"n": len(df), "median_abs_error_pct": df["abs_error_pct"].median(),
                "max_abs_error_pct": df["abs_error_pct"].max(),
                "ops_median_abs_error_pct": df["abs_ops_error_pct"].median(),
                "ops_max_abs_error_pct": df["abs_ops_error_pct"].max(),
                "speedup_median_abs_error_pct": df["abs_speedup_error_pct"].median(),
                "speedup_max_abs_error_pct": df["abs_speedup_error_pct"].max()}

    rows = [{"method": m, "phase": p, **stats(g)} for (m, p), g in ok.groupby(["method", "phase"], sort=True)]
    rows.append({"method": "overall", "phase": "all", **stats(ok)})
    return pd.DataFrame(rows)[cols]
