"""`pis-simulate`: predict latency and speedup of pruned LLMs from a profile, as a sweep."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import click
import numpy as np
import pandas as pd

from pis.errors import PisError, handle_errors
from pis.profiles.shipped import resolve_profile
from pis.profiles.store import load_profile
from pis.simulator.estimator import Estimator
from pis.simulator.models import PRESETS, ModelSpec, load_model
from pis.simulator.points import PHASES
from pis.simulator.pruning import FAMILIES, PruneOptions, describe_families
from pis.simulator.sweep import RESULT_COLUMNS, sweep

FORMATS = ("table", "json", "csv", "parquet")


def split_list(text: str, what: str, convert: Callable[[str], Any]) -> list[Any]:
    """Parse a comma list (``"0,0.25"``) with one clear error naming the option."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise PisError(f"{what}: empty list")
    out = []
    for t in items:
        try:
            out.append(convert(t))
        except ValueError:
            raise PisError(f"{what}: {t!r} is not a valid value") from None
    return out


def _positive_int(t: str) -> int:
    v = int(t)
    if v <= 0:
        raise ValueError(t)
    return v


def _sparsity(t: str) -> float:
    v = float(t)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise PisError(f"--sparsity: {t} is outside [0, 1)")
    return v


def parse_methods(text: str) -> list[str]:
    """`all` or a comma list of family names; unknown names are an error listing the families."""
    if text.strip() == "all":
        return list(FAMILIES)
    methods = split_list(text, "--method", str)
    unknown = [m for m in methods if m not in FAMILIES]
    if unknown:
        raise PisError(f"unknown method {unknown[0]!r}; known: {', '.join(FAMILIES)}")
    return methods


def parse_layer_sparsity(path: str | None) -> tuple[float, ...] | None:
    """Read one sparsity per layer (whitespace, comma or newline separated; # comments)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise PisError(f"--layer-sparsity: file {path} does not exist")
    text = "\n".join(line.split("#", 1)[0] for line in p.read_text(errors="replace").splitlines())
    tokens = text.replace(",", " ").split()
    try:
        values = tuple(float(t) for t in tokens)
    except ValueError:
        raise PisError(f"--layer-sparsity: {path} must hold one number per layer") from None
    if not values:
        raise PisError(f"--layer-sparsity: {path} holds no values")
    return values


def common_options(func: Callable) -> Callable:
    """Options shared by `pis-simulate` and `pis-pareto`."""
    opts = [
        click.option("--profile", "profile", default=None, metavar="FILE|NAME",
                     help="Latency profile (Parquet from pis-calibrate) or the name of a shipped "
                          "profile. Default: the embedded profile (see `pis-profile info`)."),
        click.option("--model", "model", default="llama-3.1-8b", show_default=True,
                     help=f"Comma list of presets ({', '.join(PRESETS)}) or paths to Hugging Face "
                          "config.json files."),
        click.option("--batch", default="1", show_default=True, help="Comma list of batch sizes."),
        click.option("--seq-len", default="1024", show_default=True,
                     help="Comma list of prompt lengths (prefill)."),
        click.option("--context", default="4096", show_default=True,
                     help="Comma list of KV-cache lengths for one decode step."),
        click.option("--granularity", type=click.Choice(["layer", "sublayer"]), default="layer",
                     show_default=True, help="static-depth: drop whole layers or attention/MLP sublayers."),
        click.option("--align", type=click.IntRange(1, 4096), default=64, show_default=True,
                     help="Width pruning and low-rank ranks round to a multiple of this."),
        click.option("--layer-sparsity", type=click.Path(dir_okay=False), default=None,
                     help="File with one sparsity per layer (non-uniform pruning); replaces --sparsity."),
        click.option("--kv-cache", type=click.Choice(["concat", "preallocated"]), default="concat",
                     show_default=True,
                     help="Decode KV cache: concat copies each layer's cache per step (Hugging Face "
                          "DynamicCache); preallocated writes in place (static/paged caches)."),
        click.option("--no-context", "no_context", is_flag=True,
                     help="Report plain sums of per-op times (on a GPU: kernel time, what a "
                          "CUDA-graph-captured engine achieves), without the in-context model "
                          "fitted to the profile's whole dense decoders (column context_factor = "
                          "latency / op sum)."),
        click.option("--allow-roofline", is_flag=True,
                     help="Estimate ops missing from the profile (e.g. 2:4 GEMMs on a CPU profile) "
                          "by roofline instead of failing; such results are flagged extrapolated."),
        click.option("--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
                     help="Parallel workers (joblib) across models × phases × methods."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def load_estimator(profile: str | None, allow_roofline: bool) -> tuple[Estimator, Path]:
    """Resolve, load and validate a profile; build its estimator."""
    path = resolve_profile(profile)
    prof = load_profile(path)
    return Estimator(prof, allow_roofline=allow_roofline), path


def run_sweep(est: Estimator, models: Sequence[ModelSpec], methods: Sequence[str],
              sparsities: Sequence[float], phases: Sequence[str], batches: Sequence[int],
              seq_lens: Sequence[int], contexts: Sequence[int], opts: PruneOptions,
              breakdown: bool, jobs: int, in_context: bool = True) -> pd.DataFrame:
    """Run a sweep, optionally split over joblib workers; row order never depends on ``jobs``."""
    if jobs == 1:
        return sweep(est, models, methods, sparsities, phases, batches, seq_lens, contexts, opts, breakdown,
                     in_context)
    from joblib import Parallel, delayed

    tasks = [(m, p, meth) for m in models for p in phases for meth in methods]
    parts = Parallel(n_jobs=jobs)(
        delayed(sweep)(est, [m], [meth], sparsities, [p], batches, seq_lens, contexts, opts, breakdown,
                       in_context)
        for m, p, meth in tasks)
    return pd.concat(parts, ignore_index=True).fillna(0.0)


def sweep_from_options(profile: str | None, model: str, method: str, sparsity: str, phase: str,
                       batch: str, seq_len: str, context: str, granularity: str, align: int,
                       layer_sparsity: str | None, allow_roofline: bool, jobs: int,
                       breakdown: bool, kv_cache: str = "concat", in_context: bool = True,
                       loaded: tuple[Estimator, Path] | None = None) -> tuple[pd.DataFrame, Path]:
    """Parse the CLI's lists, validate everything, then run the sweep.

    ``loaded`` is an estimator already built from ``profile`` (callers sweeping several times
    load the profile once).
    """
    models = [load_model(m) for m in split_list(model, "--model", str)]
    methods = parse_methods(method)
    phases = split_list(phase, "--phase", str)
    bad = [p for p in phases if p not in PHASES]
    if bad:
        raise PisError(f"--phase: unknown phase {bad[0]!r}; use prefill and/or decode")
    sparsities = split_list(sparsity, "--sparsity", _sparsity)
    batches = split_list(batch, "--batch", _positive_int)
    seq_lens = split_list(seq_len, "--seq-len", _positive_int)
    contexts = split_list(context, "--context", _positive_int)
    opts = PruneOptions(granularity=granularity, align=align,
                        layer_sparsity=parse_layer_sparsity(layer_sparsity), kv_cache=kv_cache)
    if opts.layer_sparsity is not None:
        sparsities = [float(np.mean(opts.layer_sparsity))]
    est, path = loaded or load_estimator(profile, allow_roofline)
    if method.strip() == "all" and not allow_roofline and "gemm_2to4" not in est.ops():
        # 'all' means every family the profile can answer; naming one explicitly still fails loudly.
        methods = [m for m in methods if m != "semi-structured"]
        click.echo("note: semi-structured skipped: the profile has no gemm_2to4 rows (2:4 needs a "
                   "CUDA sm80+ profile); --allow-roofline estimates it", err=True)
    df = run_sweep(est, models, methods, sparsities, phases, batches, seq_lens, contexts, opts,
                   breakdown, jobs, in_context)
    return df, path


def _json_records(df: pd.DataFrame) -> str:
    records = []
    for row in df.to_dict("records"):
        rec = {}
        for k, v in row.items():
            if isinstance(v, (np.integer,)):
                v = int(v)
            elif isinstance(v, (float, np.floating)):
                v = None if not math.isfinite(v) else float(v)
            elif isinstance(v, np.bool_):
                v = bool(v)
            rec[k] = v
        records.append(rec)
    return json.dumps(records, indent=1)


def human_table(df: pd.DataFrame, breakdown: bool) -> str:
    """A compact table for people; full precision lives in json/csv/parquet."""
    from tabulate import tabulate

    view = pd.DataFrame({
        "model": df["model"], "method": df["method"], "s": df["sparsity"], "phase": df["phase"],
        "B": df["batch"], "S": np.where(df["phase"] == "prefill", df["seq_len"].astype(str), "-"),
        "ctx": np.where(df["phase"] == "decode", df["context_len"].astype(str), "-"),
        "latency_ms": df["latency_ms"], "speedup": df["speedup"],
        "bound": df["theoretical_speedup"], "flops_x": df["flops_ratio"],
        "ctx_x": df["context_factor"],
        "path": [_source_tag(r) for r in df[["frac_exact", "frac_interp", "frac_roofline"]].to_numpy()],
        "flag": np.where(df["extrapolated"], "EXTRAP", ""),
    })
    if breakdown:
        for c in [c for c in df.columns if c.startswith("t_")]:
            view[c[2:-3]] = df[c]
        if "first_touch_ms" in df and df["first_touch_ms"].any():
            view["first_touch"] = df["first_touch_ms"]
    return tabulate(view, headers="keys", showindex=False, floatfmt=".3g")


def _source_tag(frac: np.ndarray) -> str:
    names = ("exact", "interp", "roof")
    return " ".join(f"{n}{100 * f:.0f}%" for n, f in zip(names, frac) if f >= 0.005)


def check_output(fmt: str, out: str | None, force: bool) -> None:
    """Fail before any work if the output cannot be written (or would overwrite a file)."""
    if fmt == "parquet" and out is None:
        raise PisError("--format parquet needs --out FILE")
    if out is not None:
        path = Path(out)
        if path.exists() and not force:
            raise PisError(f"{out} exists; pass --force to overwrite it")
        if not path.parent.exists():
            raise PisError(f"cannot write {out}: folder {path.parent} does not exist")


def write_output(df: pd.DataFrame, fmt: str, out: str | None, force: bool, breakdown: bool) -> None:
    """Print or write results atomically; never overwrite an existing file unless --force."""
    check_output(fmt, out, force)
    if out is not None:
        path = Path(out)
        tmp = path.with_name(f".{path.name}.tmp")
        if fmt == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            tmp.write_text(_render(df, fmt, breakdown))
        tmp.replace(path)
        click.echo(f"wrote {len(df)} design points to {out}", err=True)
    else:
        click.echo(_render(df, fmt, breakdown))


def _render(df: pd.DataFrame, fmt: str, breakdown: bool) -> str:
    if fmt == "json":
        return _json_records(df)
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.6g")
    return human_table(df, breakdown)


def _methods_help() -> str:
    return "Comma list of pruning families, or 'all': " + "; ".join(
        f"{k} ({v})" for k, v in describe_families().items())


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@common_options
@click.option("--method", default="all", show_default=True, help=_methods_help())
@click.option("--sparsity", default="0,0.25,0.5", show_default=True,
              help="Comma list of sparsities in [0, 1) (semi-structured: up to 0.5).")
@click.option("--phase", default="prefill,decode", show_default=True,
              help="Comma list: prefill (TTFT of batch x seq-len) and/or decode (one step, TPOT).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people; json (array of objects), csv or parquet for scripts.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option("--breakdown", is_flag=True,
              help="Add per-op-type times (gemm, attention, norm, ...): op sums, before the in-context factor; "
                   "on CPU profiles also first_touch_ms, the page faults of KV tensors allocated afresh over "
                   "32 MiB, added outside the factor.")
@click.version_option(package_name="pruninginfersim")
@handle_errors
def main(profile: str | None, model: str, batch: str, seq_len: str, context: str, granularity: str,
         align: int, layer_sparsity: str | None, kv_cache: str, no_context: bool, allow_roofline: bool,
         jobs: int, method: str, sparsity: str, phase: str, fmt: str, out: str | None, force: bool,
         breakdown: bool) -> None:
    """Predict how fast a pruned LLM runs, from a measured latency profile.

    Every comma list makes a Cartesian sweep. Each prediction sums per-op latencies answered
    from the profile by exact hit, interpolation, or roofline (speed of light / utilization);
    the `path` column shows the mix, and EXTRAP flags any op outside the calibrated range.
    Profiles that measured whole dense decoders add what a real eager model loses beyond its
    op sum (column `ctx_x` = latency / op sum): on a GPU, the host issuing every framework
    op (a decode step at small batch waits on Python, not on the GPU); on a CPU, cache misses
    and allocation (a factor), plus Hugging Face's framework cost per step and per op where
    the profile measured it (a shallower or narrower model keeps all of it per op), plus the
    page faults of KV-cache tensors allocated afresh above glibc's 32 MiB mmap threshold.
    `bound` is the theoretical speedup (dense speed-of-light time / pruned speed-of-light
    time) and `flops_x` the FLOPs ratio.

    Example: pis-simulate --method static-depth,static-width --sparsity 0,0.25,0.5 --batch 1,8
    """
    check_output(fmt, out, force)
    t0 = time.perf_counter()
    df, path = sweep_from_options(profile, model, method, sparsity, phase, batch, seq_len, context,
                                  granularity, align, layer_sparsity, allow_roofline, jobs, breakdown,
                                  kv_cache, in_context=not no_context)
    elapsed = time.perf_counter() - t0
    if fmt == "table":
        click.echo(f"profile: {path}  ({len(df)} design points in {elapsed:.2f} s)", err=True)
    write_output(df, fmt, out, force, breakdown)
    if df["extrapolated"].any():
        n = int(df["extrapolated"].sum())
        click.echo(f"note: {n} of {len(df)} design points use ops outside the profile's calibrated "
                   "range (flag EXTRAP / extrapolated=true)", err=True)


__all__ = ["main", "common_options", "sweep_from_options", "check_output", "write_output", "RESULT_COLUMNS"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
