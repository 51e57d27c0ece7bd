"""`pis-validate`: time real pruned models on a device and compare with the simulator's prediction."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import pandas as pd

from pis.errors import PisError, handle_errors
from pis.simulator.models import ModelSpec

TABLE_COLUMNS = ("config", "measured_ms", "predicted_ms", "error_pct", "ctx_x", "ops_error_pct",
                 "speedup meas/pred", "speedup_error_pct")


def _hf_config_json(spec: ModelSpec) -> dict:
    return {"model_type": "qwen2" if spec.arch == "qwen2" else "llama", "hidden_size": spec.hidden,
            "intermediate_size": spec.ffn, "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads,
            "head_dim": spec.head_dim, "vocab_size": spec.vocab,
            "tie_word_embeddings": spec.tie_embeddings}


def calibrate_profile(device: str, specs: list[ModelSpec], workdir: Path,
                      threads: int | None = None) -> Path:
    """Run the quick `pis-calibrate` grid on ``device`` in-process; return the profile path.

    The suite's model shape is written as a config.json and passed as ``--model`` so that
    calibration measures the exact GEMM shapes every family produces on it.
    """
    from pis.calibrate.runner import RunOptions, calibrate

    if len(specs) != 1:
        raise PisError(f"--calibrate handles suites of one model shape, this one has {len(specs)}")
    spec = specs[0]
    folder = workdir / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(_hf_config_json(spec)))
    out = workdir / "calibrated.parquet"
    click.echo(f"calibrating {device} (quick grid, --model {spec.name}) ...", err=True)
    calibrate(RunOptions(out=out, device=device, grid="quick", model=str(folder / "config.json"),
                         threads=threads))
    return out


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
                         f"{r.context_factor:.3f}", f"{r.ops_error_pct:+.1f}", *speed])
        else:
            rows.append([r.config, "-", "-" if pd.isna(r.predicted_ms) else f"{r.predicted_ms:.3f}",
                         r.status, "", "", "", ""])
    return tabulate(rows, headers=list(TABLE_COLUMNS), disable_numparse=True)


def format_summary(summary: pd.DataFrame) -> str:
    """Median and max |error| per family and phase."""
    from tabulate import tabulate

    return tabulate(summary.values.tolist(), headers=list(summary.columns), floatfmt=".1f")


def format_speedup(report: pd.DataFrame) -> str | None:
    """One line on the speedup error over dense (:func:`pis.calibrate.validate.with_speedups`);
    None without a pruned configuration that has its dense counterpart."""
    speed = report["speedup_error_pct"].abs().dropna()
    if speed.empty:
        return None
    return (f"speedup over dense at the same point ({len(speed)} pruned configurations): "
            f"median |error| {speed.median():.1f} %, max {speed.max():.1f} %")


def format_drift(drifts: list, report: pd.DataFrame) -> str:
    """The machine's drift per round and the errors with it taken out (a diagnostic)."""
    per_round = ", ".join(f"{d.median_pct:+.1f} %" for d in drifts)
    ok = report[report["status"] == "ok"]["drift_adjusted_error_pct"].abs().dropna()
    line = (f"machine drift vs the profile (median of {drifts[0].points} re-measured profile points, "
            f"per round): {per_round}")
    if len(ok):
        line += f"; errors with the drift taken out: median |error| {ok.median():.1f} %, max {ok.max():.1f} %"
    return line


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--device", required=True, help="cpu or cuda:N (the device the profile describes).")
@click.option("--profile", "profile", default=None, metavar="FILE|NAME",
              help="Latency profile of this device (Parquet from pis-calibrate, or a shipped name).")
@click.option("--calibrate", "do_calibrate", is_flag=True,
              help="Calibrate this device first (quick grid with the suite's model shapes).")
@click.option("--suite", type=click.Choice(["tiny", "quick", "full"]), default="quick", show_default=True,
              help="tiny: CI smoke (seconds); quick: ~12 configurations; full: >= 30, every family.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the report as CSV here (refuses to overwrite without --force).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--allow-roofline", is_flag=True,
              help="Price ops the profile lacks by roofline instead of skipping the configuration.")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Measure the whole suite this many times, interleaved, and report each "
                   "configuration's median over the rounds (steadier on a shared machine).")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for torch (default: torch's choice; match the calibration).")
@click.option("--drift/--no-drift", default=True, show_default=True,
              help="Before every round, re-measure a dozen of the profile's own points to report "
                   "how much faster or slower the machine runs now than when the profile was "
                   "measured (columns machine_drift_pct, drift_adjusted_error_pct; a few seconds).")
@handle_errors
def main(device: str, profile: str | None, do_calibrate: bool, suite: str, out: str | None,
         force: bool, allow_roofline: bool, rounds: int, threads: int | None, drift: bool) -> None:
    """Measure real pruned models (random weights) and report the simulator's error.

    Prefill = one forward of batch x seq (TTFT); decode = one step with a KV cache of the
    given context (TPOT). error_pct = (predicted - measured) / measured * 100; the prediction is
    the op sum with what the profile's whole-decoder rows add to it (ctx_x = prediction / op
    sum: the host-issue model on a GPU, the in-context factor on a CPU; 1 for profiles without
    those rows), and ops_error_pct scores the plain op sum.
    """
    if profile and do_calibrate:
        raise PisError("pass either --profile or --calibrate, not both")
    if not profile and not do_calibrate:
        raise PisError("pass --profile FILE (a profile of this device) or --calibrate")
    out_path = Path(out) if out else None
    if out_path is not None:
        if out_path.exists() and not force:
            raise PisError(f"{out_path} exists; pass --force to overwrite it")
        if not out_path.parent.exists():
            raise PisError(f"directory {out_path.parent} does not exist")

    import torch
    from tqdm import tqdm

    from pis.calibrate.device import resolve_device
    from pis.calibrate.drift import measure_drift
    from pis.calibrate.validate import (EFFORT, check_profile, combine_rounds, default_dtype, run_configs,
                                        suite_configs, suite_models, summarize, with_drift, with_speedups)
    from pis.profiles.shipped import resolve_profile
    from pis.profiles.store import load_profile
    from pis.simulator.estimator import Estimator

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    configs = suite_configs(suite, dev)
    dtype = default_dtype(dev)
    with tempfile.TemporaryDirectory(prefix="pis-validate-") as tmp:
        path = calibrate_profile(device, suite_models(configs), Path(tmp), threads) if do_calibrate \
            else resolve_profile(profile)
        est = Estimator(load_profile(path), allow_roofline=allow_roofline)
    warnings = check_profile(est, dev, dtype)

    def progress(desc):
        return lambda items: tqdm(items, desc=desc, unit="config", file=sys.stderr, leave=False,
                                  dynamic_ncols=True)

    reports, drifts = [], []
    for i in range(rounds):
        label = f"pis-validate {suite}" + (f" round {i + 1}/{rounds}" if rounds > 1 else "")
        d = measure_drift(est.profile, dev, est.dtype) if drift else None
        if d is not None:
            click.echo(f"{label}: {d.describe()}", err=True)
            if not d.points:  # a profile without probe rows: nothing to report per configuration
                d = None
            else:
                drifts.append(d)
        rep = run_configs(configs, est, dev, dtype, EFFORT[suite], progress=progress(label))
        reports.append(with_drift(rep, d.median_pct) if d is not None else rep)
    report = with_speedups(combine_rounds(reports))
    click.echo(format_table(report))
    click.echo("")
    click.echo(format_summary(summarize(report)))
    speed = format_speedup(report)
    if speed:
        click.echo(f"\n{speed}")
    extra = "; * = some op extrapolated" if report["extrapolated"].any() else ""
    if rounds > 1:
        extra += (f"; median of {rounds} rounds (round-to-round spread: median "
                  f"{report['round_spread_pct'].median():.1f} %, max {report['round_spread_pct'].max():.1f} %)")
    click.echo(f"\ndevice {dev} ({str(dtype).replace('torch.', '')}), profile {est.name}, suite {suite}, "
               f"{int((report['status'] == 'ok').sum())}/{len(report)} configurations measured{extra}")
    if drifts:
        click.echo(format_drift(drifts, report))
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if out_path is not None:
        tmp_out = out_path.with_name(out_path.name + ".tmp")
        report.to_csv(tmp_out, index=False)
        tmp_out.replace(out_path)
        click.echo(f"wrote {out_path}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
