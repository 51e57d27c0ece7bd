"""Validation reports: combining rounds, speedups over dense, drift, and the summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns of the per-configuration table for people.
TABLE_COLUMNS = ("config", "measured_ms", "predicted_ms", "error_pct", "model_x", "ops_error_pct",
                 "speedup meas/pred", "speedup_error_pct")

#: Columns of the validation report, in order.
REPORT_COLUMNS: tuple[str, ...] = (
    "config", "model", "layers", "backend", "method", "weights", "granularity", "sparsity", "phase", "batch",
    "seq_len", "context_len", "measured_ms", "measured_p10_ms", "measured_p90_ms", "repeats",
    "predicted_ms", "error_pct", "predicted_ops_ms", "ops_error_pct", "in_model_factor",
    "extrapolated", "status", "device", "dtype", "rounds", "round_spread_pct", "round_measured_ms",
    "machine_drift_pct", "drift_adjusted_error_pct", "measured_speedup", "predicted_speedup",
    "speedup_error_pct",
    # provenance (:func:`provenance`): what ran, where, against which code and profile
    "suite", "execution", "device_name", "threads", "commit", "profile_sha256",
)
#: Separator of the per-round medians in ``round_measured_ms`` (one string per row of the CSV).
ROUND_SEP = ";"
#: A pruned configuration's dense counterpart: the same model and executor at the same point.
SPEEDUP_KEY: tuple[str, ...] = ("model", "layers", "backend", "phase", "batch", "seq_len", "context_len")


def error_pct(predicted, measured):
    """(predicted - measured) / measured x 100 (scalars or arrays)."""
    return (predicted - measured) / measured * 100.0


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
    out["round_measured_ms"] = pd.Series(np.nan, index=out.index, dtype=object)
    out.loc[ok, "round_measured_ms"] = [ROUND_SEP.join(f"{x:.6g}" for x in r) for r in meds[ok]]
    m = out.loc[ok, "measured_ms"]
    out.loc[ok, "error_pct"] = error_pct(out.loc[ok, "predicted_ms"], m)
    out.loc[ok, "ops_error_pct"] = error_pct(out.loc[ok, "predicted_ops_ms"], m)
    return with_drift(out, np.median([r["machine_drift_pct"].to_numpy(dtype=float) for r in reports], axis=0))


def with_drift(report: pd.DataFrame, drift_pct: "float | np.ndarray") -> pd.DataFrame:
    """``report`` with ``machine_drift_pct`` set and ``drift_adjusted_error_pct`` computed.

    The adjusted error scores the prediction scaled by the machine's drift since the profile
    was measured (:mod:`pis.validate.drift`): how wrong the simulator would be on a machine
    as fast as at calibration. A diagnostic only; ``error_pct`` stays the headline.
    """
    out = report.copy()
    out["machine_drift_pct"] = drift_pct
    out["drift_adjusted_error_pct"] = error_pct(out["predicted_ms"] * (1.0 + out["machine_drift_pct"] / 100.0),
                                                out["measured_ms"])
    return out


def with_speedups(report: pd.DataFrame) -> pd.DataFrame:
    """``report`` with each pruned or quantized configuration's speedup over its dense counterpart
    with native weights (:data:`SPEEDUP_KEY`), measured and predicted, and ``speedup_error_pct``
    between them.

    This is the figure a pruning study reads. A common error of the absolute level (the machine
    running slower than at calibration, the in-model factor's own scatter) cancels in it, so
    it shows how well the op graph and the in-model correction carry from dense to pruned. The
    measured speedup is the ratio of the two medians over the rounds. Rows without a measured
    dense counterpart, and the dense rows themselves, stay NaN.
    """
    out = report.copy()
    key = list(SPEEDUP_KEY)
    ok = out["status"] == "ok"
    native = out["weights"].fillna("native") == "native" if "weights" in out else pd.Series(True, index=out.index)
    baseline = ok & (out["method"] == "dense") & native
    dense = (out[baseline].drop_duplicates(key).set_index(key)
             [["measured_ms", "predicted_ms"]].add_suffix("_dense"))
    both = out.join(dense, on=key)
    pruned = ok & ~baseline & both["measured_ms_dense"].notna()
    out["measured_speedup"] = (both["measured_ms_dense"] / out["measured_ms"]).where(pruned)
    out["predicted_speedup"] = (both["predicted_ms_dense"] / out["predicted_ms"]).where(pruned)
    out["speedup_error_pct"] = error_pct(out["predicted_speedup"], out["measured_speedup"])
    return out


def summarize_report(report: pd.DataFrame) -> pd.DataFrame:
    """Median and max |error| per family and phase, plus an overall row (ok rows only).

    ``*_abs_error_pct`` score the prediction (the op sum with the in-model correction);
    ``ops_*`` score the plain op sum, so the report shows what the correction contributes;
    ``speedup_*`` score the predicted speedup over dense (:func:`with_speedups`; NaN for dense
    and without one).
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


def format_table(report: pd.DataFrame) -> str:
    """The per-configuration table (skipped rows show their status)."""
    from tabulate import tabulate

    rows = []
    for r in report.itertuples(index=False):
        if r.status == "ok":
            # over the dense model at the same point (with_speedups); blank for dense itself
            err = getattr(r, "speedup_error_pct", float("nan"))
            speed = ["", ""] if pd.isna(err) else [f"{r.measured_speedup:.2f}/{r.predicted_speedup:.2f}", f"{err:+.1f}"]
            rows.append([r.config, f"{r.measured_ms:.3f}", f"{r.predicted_ms:.3f}",
                         f"{r.error_pct:+.1f}" + ("*" if r.extrapolated else ""),
                         f"{r.in_model_factor:.3f}", f"{r.ops_error_pct:+.1f}", *speed])
        else:
            rows.append([r.config, "-", "-" if pd.isna(r.predicted_ms) else f"{r.predicted_ms:.3f}",
                         r.status, "", "", "", ""])
    return tabulate(rows, headers=list(TABLE_COLUMNS), disable_numparse=True)


def format_summary(summary: pd.DataFrame) -> str:
    """Median and max |error| per family and phase."""
    from tabulate import tabulate

    return tabulate(summary.values.tolist(), headers=list(summary.columns), floatfmt=".1f")


def format_speedup(report: pd.DataFrame) -> str | None:
    """One line on the speedup error over dense (:func:`with_speedups`);
    None without a pruned configuration that has its dense counterpart."""
    speed = report["speedup_error_pct"].abs().dropna()
    if speed.empty:
        return None
    return (f"speedup over dense at the same point ({len(speed)} pruned configurations): "
            f"median |error| {speed.median():.1f} %, max {speed.max():.1f} %")


#: A round whose machine drift exceeds this (|%|) leaves the absolute errors meaningless: the
#: machine itself ran that far from the state the profile describes.
DRIFT_TOO_LARGE_PCT = 15.0


def format_drift(drifts: list, report: pd.DataFrame) -> str:
    """The machine's drift per round and the errors with it taken out (a diagnostic), and one more
    line when a round drifted past :data:`DRIFT_TOO_LARGE_PCT`."""
    per_round = ", ".join(f"{d.median_pct:+.1f} %" for d in drifts)
    ok = report[report["status"] == "ok"]["drift_adjusted_error_pct"].abs().dropna()
    line = (f"machine drift vs the profile (median of {drifts[0].points} re-measured profile points, "
            f"per round): {per_round}")
    if len(ok):
        line += f"; errors with the drift taken out: median |error| {ok.median():.1f} %, max {ok.max():.1f} %"
    worst = max((abs(d.median_pct) for d in drifts), default=0.0)
    if worst > DRIFT_TOO_LARGE_PCT:
        line += (f"\nwarning: the machine ran {worst:.0f} % away from the state its profile describes: the "
                 "absolute errors above say little about pis here (judge it by the drift-adjusted errors and "
                 "the speedups, ratios measured back to back)")
    return line


def git_commit(root: "str | None" = None) -> str:
    """The commit of the working tree pis runs from (``+dirty`` with uncommitted changes), or
    ``unknown`` outside a git checkout."""
    import subprocess
    from pathlib import Path

    here = Path(root) if root else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def provenance(sim, device, suite: str) -> dict[str, object]:
    """The report columns that say what ran where: suite, the device's name (the CPU model on a
    CPU), torch's threads, the code's commit and the profile's sha256."""
    import torch

    from pis.calibrate.device import cpu_model

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return dict(suite=suite, device_name=name, threads=torch.get_num_threads(), commit=git_commit(),
                profile_sha256=sim.profile_sha256)
