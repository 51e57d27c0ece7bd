"""`pis-simulate`: predict latency and speedup of pruned LLMs from a profile, as a sweep."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np

from pis.errors import handle_errors
from pis.simulator.cli_options import (check_output, json_records, sweep_from_options, sweep_options,
                                       write_text)
from pis.simulator.pruning import describe_families
from pis.simulator.sweep import Columns, to_frame

FORMATS = ("table", "json", "csv", "parquet")


def human_table(cols: Columns, breakdown: bool) -> str:
    """A compact table for people; full precision lives in json/csv/parquet."""
    import pandas as pd
    from tabulate import tabulate

    prefill = cols["phase"] == "prefill"
    view = pd.DataFrame({
        "model": cols["model"], "method": cols["method"], "weights": cols["weights"], "s": cols["sparsity"],
        "phase": cols["phase"],
        "B": cols["batch"], "S": np.where(prefill, cols["seq_len"].astype(str), "-"),
        "ctx": np.where(~prefill, cols["context_len"].astype(str), "-"),
        "latency_ms": cols["latency_ms"], "speedup": cols["speedup"],
        "bound": cols["theoretical_speedup"], "flops_x": cols["flops_ratio"],
        "model_x": cols["in_model_factor"],
        "path": [_source_tag(f) for f in zip(cols["frac_exact"], cols["frac_interp"], cols["frac_roofline"])],
        "flag": np.where(cols["extrapolated"], "EXTRAP", ""),
    })
    if breakdown:
        for c in [c for c in cols if c.startswith("t_")]:
            view[c[2:-3]] = cols[c]
        if "first_touch_ms" in cols and cols["first_touch_ms"].any():
            view["first_touch"] = cols["first_touch_ms"]
    return tabulate(view, headers="keys", showindex=False, floatfmt=".3g")


def _source_tag(frac: tuple[float, float, float]) -> str:
    names = ("exact", "interp", "roof")
    return " ".join(f"{n}{100 * f:.0f}%" for n, f in zip(names, frac) if f >= 0.005)


def write_output(cols: Columns, fmt: str, out: str | None, force: bool, breakdown: bool) -> None:
    """Print or write results atomically; never overwrite an existing file unless --force."""
    check_output(fmt, out, force)
    n = len(cols["model"])
    if fmt == "parquet":
        path = Path(out)  # check_output made sure there is one
        tmp = path.with_name(f".{path.name}.tmp")
        to_frame(cols).to_parquet(tmp, index=False)
        tmp.replace(path)
        click.echo(f"wrote {n} design points to {out}", err=True)
        return
    if fmt == "json":
        text = json_records(cols)
    elif fmt == "csv":
        text = to_frame(cols).to_csv(index=False, float_format="%.6g")
    else:
        text = human_table(cols, breakdown)
    write_text(text, out, force, f"{n} design points to {out}")


def _methods_help() -> str:
    return "Comma list of pruning families, or 'all': " + "; ".join(
        f"{k} ({v})" for k, v in describe_families().items())


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@sweep_options
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
              help="Add per-op-type times (gemm, attention, norm, ...): op sums, before the in-model "
                   "correction; on CPU profiles also first_touch_ms, the page faults of KV tensors "
                   "allocated afresh above the allocator's mmap threshold, added outside the factor.")
@click.version_option(package_name="pruninginfersim")
@handle_errors
def main(profile: str | None, model: str, batch: str, seq_len: str, context: str, granularity: str,
         align: int, layer_sparsity: str | None, execution: str | None, op_graph: str | None,
         variant: tuple[str, ...], weights: str, group_size: int, quantize_head: bool, kv_cache: str | None,
         op_sum: bool, allow_roofline: bool, jobs: int, method: str, sparsity: str, phase: str, fmt: str,
         out: str | None, force: bool, breakdown: bool) -> None:
    """Predict how fast a pruned LLM runs, from a measured latency profile.

    Every comma list makes a Cartesian sweep. Each prediction sums per-op latencies answered
    from the profile by exact hit, interpolation, or roofline (speed of light / utilization);
    the `path` column shows the mix, and EXTRAP flags any op outside the calibrated range.
    Profiles that measured whole decoders add what a real model loses beyond its op sum, the
    in-model correction (column `model_x` = latency / op sum): under graph execution (GPU
    default), the factor of graph-replayed decoders; on a GPU run eagerly, the host issuing
    every dispatch (a decode step at small batch waits on Python, not on the GPU); on a CPU
    (eager), ops running slower in the model than alone (a factor), Hugging Face's framework
    cost per step and per dispatch, and the page faults of KV tensors allocated afresh.
    `bound` is the theoretical speedup (dense speed-of-light time / pruned speed-of-light
    time) and `flops_x` the FLOPs ratio. With --weights, each format is a sweep of its own and
    every speedup is against the unpruned model with native weights.

    Example: pis-simulate --method static-depth,static-width --sparsity 0,0.25,0.5 --batch 1,8

    Example: pis-simulate --method dense,static-depth --sparsity 0.25 --weights bf16,int4 --phase decode
    """
    check_output(fmt, out, force)
    t0 = time.perf_counter()
    cols, sim = sweep_from_options(profile, model, method, sparsity, phase, batch, seq_len, context,
                                   granularity, align, layer_sparsity, allow_roofline, jobs, breakdown,
                                   kv_cache, in_model=not op_sum, execution=execution, op_graph=op_graph,
                                   variant=variant, weights=weights, group_size=group_size,
                                   quantize_head=quantize_head)
    n = len(cols["model"])
    if fmt == "table":
        click.echo(f"profile: {sim.path}  ({n} design points in {time.perf_counter() - t0:.2f} s)", err=True)
    write_output(cols, fmt, out, force, breakdown)
    if cols["extrapolated"].any():
        k = int(cols["extrapolated"].sum())
        click.echo(f"note: {k} of {n} design points use ops outside the profile's calibrated "
                   "range (flag EXTRAP / extrapolated=true)", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
