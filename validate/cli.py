"""`pis-validate`: time real pruned models on a device and compare with the simulator's prediction.

``pis-validate run`` (the default subcommand: ``pis-validate --device cpu ...`` runs it) measures;
``pis-validate rescore`` re-predicts a saved report with another profile or a newer simulator.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

from pis.errors import PisError, handle_errors
from pis.models import ModelSpec
from pis.pruned import weight_format
from pis.simulator.cli_options import split_list


class DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to ``run``: the plain
    ``pis-validate --device cpu ...`` keeps working. (The ``click-default-group`` package does
    this too; these few lines spare a dependency.)"""

    default = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pruninginfersim")
def main() -> None:
    """Measure real pruned models and report the simulator's error (run), or re-predict a saved
    report (rescore). `pis-validate --device cpu --profile cpu-2core` runs `run`."""


def _hf_config_json(spec: ModelSpec) -> dict:
    return {"model_type": "qwen2" if spec.arch == "qwen2" else "llama", "hidden_size": spec.hidden,
            "intermediate_size": spec.ffn, "num_hidden_layers": spec.layers,
            "num_attention_heads": spec.heads, "num_key_value_heads": spec.kv_heads,
            "head_dim": spec.head_dim, "vocab_size": spec.vocab,
            "tie_word_embeddings": spec.tie_embeddings}


def calibrate_profile(device: str, specs: list[ModelSpec], workdir: Path,
                      threads: int | None = None, dtype: str | None = None) -> Path:
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
                         threads=threads, dtype=dtype))
    return out


def _check_out(out: str | None, force: bool) -> Path | None:
    path = Path(out) if out else None
    if path is not None:
        if path.exists() and not force:
            raise PisError(f"{path} exists; pass --force to overwrite it")
        if not path.parent.exists():
            raise PisError(f"directory {path.parent} does not exist")
    return path


def _write_csv(report, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    report.to_csv(tmp, index=False)
    tmp.replace(path)
    click.echo(f"wrote {path}", err=True)


@main.command()
@click.option("--device", required=True, help="cpu or cuda:N (the device the profile describes).")
@click.option("--profile", "profile", default=None, metavar="FILE|NAME",
              help="Latency profile of this device (Parquet from pis-calibrate, or a shipped name).")
@click.option("--calibrate", "do_calibrate", is_flag=True,
              help="Calibrate this device first (quick grid with the suite's model shapes).")
@click.option("--suite", type=click.Choice(["tiny", "quick", "full"]), default="quick", show_default=True,
              help="tiny: CI smoke (seconds); quick: ~12 configurations; full: every family, both "
                   "phases, several batch sizes and lengths.")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the report as CSV here (refuses to overwrite without --force).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@click.option("--allow-roofline", is_flag=True,
              help="Price ops the profile lacks by roofline instead of skipping the configuration.")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Measure the whole suite this many times, interleaved, and report each "
                   "configuration's median over the rounds (steadier on a shared machine).")
@click.option("--execution", type=click.Choice(["eager", "graph"]), default="eager", show_default=True,
              help="eager: every step as PyTorch issues it (Hugging Face with its DynamicCache, pis's "
                   "reference decoder). graph: the study's regime on CUDA: each step captured in one "
                   "CUDA graph and replayed (events, median of repeats), Hugging Face with a static "
                   "cache written in place and Liger's RMSNorm/RoPE where installed, the study's op "
                   "graphs (suites of Llama-3.1-8B shapes at S = 1024, contexts 4096 and 32768).")
@click.option("--weights", default=None, metavar="LIST",
              help="Comma list of weight formats (native or bf16/fp16/fp32, fp8, int8, int4): run the suite's "
                   "configurations once per format (quantized: the Hugging Face families; pis's "
                   "reference decoder runs native weights). Default: the suite as defined, whose full "
                   "suites include quantized rows.")
@click.option("--group-size", type=click.IntRange(1, 65536), default=128, show_default=True,
              help="int4 weights per scale and zero along K.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Element type of the models (and of --calibrate's profile). Default: bf16 on CUDA, fp32 on "
                   "a CPU; a profile of another dtype gets a warning.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="CPU threads for torch (default: torch's choice; match the calibration).")
@click.option("--drift/--no-drift", default=True, show_default=True,
              help="Before every round, re-measure a dozen of the profile's own points to report "
                   "how much faster or slower the machine runs now than when the profile was "
                   "measured (columns machine_drift_pct, drift_adjusted_error_pct; a few seconds).")
@handle_errors
def run(device: str, profile: str | None, do_calibrate: bool, suite: str, out: str | None,
        force: bool, allow_roofline: bool, rounds: int, execution: str, weights: str | None, group_size: int,
        dtype: str | None, threads: int | None, drift: bool) -> None:
    """Measure real pruned models (random weights) and report the simulator's error.

    Prefill = one forward of batch x seq (TTFT); decode = one step with a KV cache of the
    given context (TPOT). error_pct = (predicted - measured) / measured * 100; the prediction is
    the op sum with the profile's in-model correction (model_x = prediction / op sum: the
    host-issue model on a GPU run eagerly, the in-model factor on a CPU; 1 for profiles without
    whole-decoder rows), and ops_error_pct scores the plain op sum.
    """
    if execution == "graph" and not device.strip().lower().startswith("cuda"):
        raise PisError("graph execution replays CUDA graphs: it needs --device cuda:N (use --execution eager)")
    if profile and do_calibrate:
        raise PisError("pass either --profile or --calibrate, not both")
    if not profile and not do_calibrate:
        raise PisError("pass --profile FILE (a profile of this device) or --calibrate")
    out_path = _check_out(out, force)

    import torch
    from tqdm import tqdm

    from pis.calibrate.device import default_dtype, resolve_device
    from pis.simulator.api import Simulator
    from pis.validate.drift import measure_drift
    from pis.validate.report import (combine_rounds, format_drift, format_speedup, format_summary, format_table,
                                     provenance, summarize_report, with_drift, with_speedups)
    from pis.validate.run import EFFORT, check_profile_matches, run_configs
    from pis.validate.suites import suite_configs, suite_models, with_weights

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    configs = suite_configs(suite, dev.type, execution)
    if weights is not None:
        configs = with_weights(configs, [weight_format(w) for w in split_list(weights, "--weights", str)])
    if group_size != 128:
        configs = [replace(c, group_size=group_size) for c in configs]
    with tempfile.TemporaryDirectory(prefix="pis-validate-") as tmp:
        path = calibrate_profile(device, suite_models(configs), Path(tmp), threads, dtype) if do_calibrate \
            else profile
        sim = Simulator(path, allow_roofline=allow_roofline)
    dtype = dtype or default_dtype(dev.type)
    warnings = check_profile_matches(sim.estimator, dev, dtype)

    def progress(desc):
        return lambda items: tqdm(items, desc=desc, unit="config", file=sys.stderr, leave=False,
                                  dynamic_ncols=True)

    reports, drifts = [], []
    for i in range(rounds):
        label = f"pis-validate {suite}" + (f" round {i + 1}/{rounds}" if rounds > 1 else "")
        d = measure_drift(sim.profile, dev, sim.estimator.dtype) if drift else None
        if d is not None:
            click.echo(f"{label}: {d.describe()}", err=True)
            if not d.points:  # a profile without probe rows: nothing to report per configuration
                d = None
            else:
                drifts.append(d)
        rep = run_configs(configs, sim, dev, dtype, EFFORT[suite], progress=progress(label))
        reports.append(with_drift(rep, d.median_pct) if d is not None else rep)
    report = with_speedups(combine_rounds(reports)).assign(**provenance(sim, dev, suite), execution=execution)
    click.echo(format_table(report))
    click.echo("")
    click.echo(format_summary(summarize_report(report)))
    speed = format_speedup(report)
    if speed:
        click.echo(f"\n{speed}")
    extra = "; * = some op extrapolated" if report["extrapolated"].any() else ""
    if rounds > 1:
        extra += (f"; median of {rounds} rounds (round-to-round spread: median "
                  f"{report['round_spread_pct'].median():.1f} %, max {report['round_spread_pct'].max():.1f} %)")
    click.echo(f"\ndevice {dev} ({report['device_name'].iloc[0]}, {report['threads'].iloc[0]} threads, {dtype}), "
               f"profile {sim.estimator.name}, suite {suite}, "
               f"{int((report['status'] == 'ok').sum())}/{len(report)} configurations measured{extra}")
    if drifts:
        click.echo(format_drift(drifts, report))
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if out_path is not None:
        _write_csv(report, out_path)


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--profile", "profile", required=True, metavar="FILE|NAME",
              help="Profile to predict with (a file or a shipped name).")
@click.option("--suite", type=click.Choice(["tiny", "quick", "full"]), default=None,
              help="The suite the report ran (default: its suite column, else quick).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="The kind of device the report ran on (default: its device column).")
@click.option("--execution", type=click.Choice(["eager", "graph"]), default=None,
              help="How the report's steps ran (default: its execution column, else eager).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the rescored report as CSV here (refuses to overwrite without --force).")
@click.option("--force", is_flag=True, help="Overwrite --out.")
@handle_errors
def rescore(report: str, profile: str, suite: str | None, device: str | None, execution: str | None, out: str | None,
            force: bool) -> None:
    """Re-predict a saved report: keep its measurements, predict each configuration again.

    Measurements are expensive (a GPU lease); predictions are not. A simulator change can be
    scored against measurements taken earlier, on a machine with no GPU. Configurations are
    matched by their label (the report's config column) in the suite the report was made with.
    """
    out_path = _check_out(out, force)
    from pis.validate.report import format_speedup, format_summary, summarize_report
    from pis.validate.rescore import rescore_report

    rescored = rescore_report(report, profile, suite, device, execution)
    show = ["config", "measured_ms", "predicted_ms", "error_pct", "in_model_factor", "extrapolated"]
    click.echo(rescored[show].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    click.echo("")
    click.echo(format_summary(summarize_report(rescored)))
    err = rescored["error_pct"].abs()
    click.echo(f"\n{len(rescored)} configurations: median |error| {err.median():.1f} %, max {err.max():.1f} %")
    if rescored.attrs.get("unmatched"):
        click.echo(f"note: {rescored.attrs['unmatched']} measured rows of {report} match no configuration of the "
                   f"{rescored.attrs['suite']} suite and are left out (--suite names the suite the report ran)",
                   err=True)
    speed = format_speedup(rescored)
    if speed:
        click.echo(speed)
    if out_path is not None:
        _write_csv(rescored, out_path)


if __name__ == "__main__":  # pragma: no cover
    main()
