"""Rescoring: predict a saved validation report's configurations again, keeping its measurements.

Measurements are expensive (a GPU lease); predictions are not. ``pis-validate rescore`` keeps
each report's ``measured_ms`` (and its machine drift, where the report has one) and recomputes
the prediction and the errors, so a simulator change or another profile can be scored against
measurements taken earlier, on a machine with no GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from pis.errors import PisError
from pis.pruned import WEIGHT_FORMATS
from pis.simulator.api import Simulator
from pis.validate.report import SPEEDUP_KEY, error_pct, with_drift, with_speedups
from pis.validate.run import predict
from pis.validate.suites import SUITES, suite_configs, with_weights


def read_report(path: str) -> pd.DataFrame:
    """A saved report (CSV), or a one-line error."""
    try:
        df = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PisError(f"cannot read report {path}: {' '.join(str(err).split())[:160]}") from None
    missing = [c for c in ("config", "measured_ms", *[k for k in SPEEDUP_KEY if k != "phase"]) if c not in df]
    if missing:
        raise PisError(f"{path} is not a pis-validate report (no {', '.join(missing)} column)")
    return df


def rescore_report(path: str, profile: str, suite: str | None = None, device_kind: str | None = None,
                   execution: str | None = None) -> pd.DataFrame:
    """The report at ``path`` with every measured configuration predicted again from ``profile``.

    ``suite``, ``device_kind`` and ``execution`` default to the report's own columns; a report
    without a ``suite`` column (an older one) is matched against the suite that holds most of
    its labels. ``df.attrs["unmatched"]`` counts the measured rows no configuration matched."""
    df = read_report(path)
    if device_kind is None:
        device_kind = "cuda" if "device" in df and str(df["device"].iloc[0]).startswith("cuda") else "cpu"
    if execution is None:
        execution = str(df["execution"].iloc[0]) if "execution" in df and len(df) else "eager"
    if suite is None and "suite" in df and len(df):
        suite = str(df["suite"].iloc[0])
    candidates = [suite] if suite is not None else list(SUITES)
    labels = set(df["config"].astype(str))
    configs_of = {s: _configs(s, device_kind, execution) for s in candidates}
    suite = max(candidates, key=lambda s: len(labels & set(configs_of[s])))
    configs = configs_of[suite]
    sim = Simulator(profile)
    rows = []
    for r in df.itertuples():
        cfg = configs.get(r.config)
        if cfg is None or not np.isfinite(r.measured_ms):
            continue
        pred, extrap, factor = predict(sim, cfg)
        rows.append(dict(config=r.config, method=cfg.method, weights=cfg.weights, phase=cfg.phase, status="ok",
                         measured_ms=r.measured_ms, predicted_ms=pred,
                         error_pct=error_pct(pred, r.measured_ms), predicted_ops_ms=pred / factor,
                         ops_error_pct=error_pct(pred / factor, r.measured_ms), in_model_factor=factor,
                         extrapolated=extrap, **{k: getattr(r, k) for k in SPEEDUP_KEY if k != "phase"},
                         machine_drift_pct=getattr(r, "machine_drift_pct", np.nan)))
    if not rows:
        raise PisError(f"no configuration of {path} belongs to the {suite} suite on {device_kind}")
    out = pd.DataFrame(rows)
    out = with_speedups(with_drift(out, out["machine_drift_pct"].to_numpy(dtype=float)))
    measured = int(np.isfinite(df["measured_ms"].to_numpy(dtype=float)).sum())
    out.attrs.update(suite=suite, unmatched=measured - len(rows))
    return out


def _configs(suite: str, device_kind: str, execution: str) -> dict[str, Any]:
    """Label -> configuration of ``suite``, with every weight format's copy."""
    cfgs = suite_configs(suite, device_kind, execution)
    return {c.label: c for c in cfgs + with_weights(cfgs, WEIGHT_FORMATS)}
