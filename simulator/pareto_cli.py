"""`pis-pareto`: which pruning family gives the best speedup for a given quality loss."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from pis.errors import PisError, handle_errors
from pis.simulator.api import Simulator
from pis.simulator.cli_options import (json_records, note_untimed_formats, parse_grid, parse_methods, parse_weights,
                                       skip_unanswerable, sparsity_value, split_list, sweep_options, write_text)
from pis.simulator.pareto import (CANDIDATE, STUDY_BANDS_PREFILL, bands, compare_with_study, efficiency, frontier,
                                  scenario_columns, with_candidates)
from pis.simulator.points import PHASES
from pis.simulator.quality import FLAG_OUT_OF_RANGE, load_quality

DEFAULT_SPARSITY = ",".join(f"{i / 20:g}" for i in range(19))  # 0, 0.05, ..., 0.9
FORMATS = ("table", "json", "csv")


def _fmt_loss(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.3g}"


def _scenario_label(row: pd.Series) -> str:
    parts = [f"{row['model']}", f"{row['phase']}", f"B={row['batch']}"]
    parts.append(f"S={row['seq_len']}" if row["phase"] == "prefill" else f"ctx={row['context_len']}")
    return " ".join(parts)


#: The study's headline on realized against theoretical speedup, printed beside pis's.
STUDY_EFFICIENCY = ("study (arXiv 2606.09080): static depth comes closest to its theoretical speedup "
                    "where the phase is memory-bound (decode at small batch)")


def render_table(front: pd.DataFrame, found: pd.DataFrame, study: pd.DataFrame | None,
                 eff: pd.DataFrame | None = None) -> str:
    """Human-readable frontier, bands, realized ÷ theoretical speedup per family and the study
    comparison, one block per scenario."""
    from tabulate import tabulate

    cols = scenario_columns(front)
    out = []
    for key, f in front.groupby(cols, sort=True):
        b, e = found, eff
        for c, v in zip(cols, key if isinstance(key, tuple) else (key,)):
            b = b[b[c] == v]
            e = e[e[c] == v] if e is not None else None
        out.append(f"== {_scenario_label(f.iloc[0])}")
        out.append("Pareto frontier (higher speedup, lower quality loss):")
        view = pd.DataFrame({"method": f[CANDIDATE] if CANDIDATE in f else f["method"], "s": f["sparsity"],
                             "speedup": f["speedup"], "bound": f["theoretical_speedup"],
                             "loss_%": f["quality_loss_pct"], "latency_ms": f["latency_ms"]})
        if "quality_rule" in f and (f["quality_rule"] != "table").any():
            view["loss_from"] = f["quality_rule"].to_numpy()
        out.append(tabulate(view, headers="keys", showindex=False, floatfmt=".3g"))
        out.append("\nBest family per allowed quality loss (bands):")
        bview = pd.DataFrame({"family": b["family"],
                              "loss_%": [f"{_fmt_loss(a)}-{_fmt_loss(z)}" for a, z in zip(b["loss_from"], b["loss_to"])],
                              "best_speedup": b["best_speedup"], "at_s": b["best_sparsity"]})
        out.append(tabulate(bview, headers="keys", showindex=False, floatfmt=".3g"))
        if e is not None and len(e):
            e = e.sort_values("efficiency", ascending=False, kind="mergesort")
            out.append(f"\nRealized / theoretical speedup per family (at the sparsity nearest 0.5); {STUDY_EFFICIENCY}:")
            eview = pd.DataFrame({"family": e["method"], "s": e["sparsity"], "speedup": e["speedup"],
                                  "bound": e["theoretical_speedup"], "realized/bound": e["efficiency"]})
            out.append(tabulate(eview, headers="keys", showindex=False, floatfmt=".3g"))
        if study is not None and f["phase"].iloc[0] == "prefill":
            c = compare_with_study(b, study)
            out.append("\nStudy bands (arXiv 2606.09080, prefill) vs simulated:")
            cview = pd.DataFrame({"study_family": c["study_family"],
                                  "loss_%": [f"{a:g}-{z:g}" for a, z in zip(c["loss_from"], c["loss_to"])],
                                  "simulated winner(s)": c["simulated"],
                                  "agreement": [f"{100 * a:.0f}%" for a in c["agreement"]]})
            out.append(tabulate(cview, headers="keys", showindex=False))
        out.append("")
    return "\n".join(out)


def _records(df: pd.DataFrame) -> list:
    return json.loads(json_records({c: df[c].to_numpy() for c in df.columns})) if len(df) else []


def render(fmt: str, points: pd.DataFrame, front: pd.DataFrame, found: pd.DataFrame,
           study: pd.DataFrame | None, missing: list[str], quality_source: str, profile: Path,
           eff: pd.DataFrame | None = None) -> str:
    """The whole answer in ``fmt`` (table, json object, or csv of every design point)."""
    if fmt == "csv":
        return points.to_csv(index=False, float_format="%.6g")
    if fmt == "json":
        cmp = pd.concat([compare_with_study(g, study).assign(**dict(zip(
            scenario_columns(found), k if isinstance(k, tuple) else (k,))))
            for k, g in found.groupby(scenario_columns(found), sort=True)], ignore_index=True) \
            if study is not None and len(found) else pd.DataFrame()
        return json.dumps({"profile": str(profile), "quality": quality_source,
                           "no_quality_data": missing, "frontier": _records(front),
                           "bands": _records(found), "study_comparison": _records(cmp),
                           "efficiency": _records(eff) if eff is not None else [],
                           "study_efficiency": STUDY_EFFICIENCY, "points": _records(points)}, indent=1)
    return render_table(front, found, study, eff)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@sweep_options
@click.option("--method", default="all", show_default=True,
              help="Comma list of pruning families, or 'all' (dense is always included).")
@click.option("--sparsity", default=DEFAULT_SPARSITY, show_default=True,
              help="Comma list of sparsities; each family uses those it can realize "
                   "(semi-structured: up to 0.5).")
@click.option("--phase", type=click.Choice(PHASES), default="prefill", show_default=True,
              help="One phase: prefill (TTFT) or decode (one step).")
@click.option("--quality", "quality_file", default=None, type=click.Path(dir_okay=False),
              help="CSV with columns method, sparsity, quality_loss_pct (percent), and optionally weights "
                   "(native, fp8, int8, int4; a dense row of a format is what quantizing alone loses). Without "
                   "rows of its own, a pruned-and-quantized point combines the two losses as "
                   "1-(1-l_prune)(1-l_quant). Default: the shipped table built from published accuracies "
                   "(see simulator/data/QUALITY.md).")
@click.option("--plot", "plot_dir", default=None, type=click.Path(file_okay=False),
              help="Write Pareto and latency-breakdown figures (PNG + SVG) into DIR.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="table for people; json (frontier, bands, study comparison, points) or csv "
                   "(every design point with its quality loss and on_frontier) for scripts.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@click.option("--force", is_flag=True, help="Overwrite --out and existing figures.")
@click.version_option(package_name="pruninginfersim")
@handle_errors
def main(profile: str | None, model: str, batch: str, seq_len: str, context: str, granularity: str,
         align: int, layer_sparsity: str | None, execution: str | None, op_graph: str | None,
         variant: tuple[str, ...], weights: str, group_size: int, quantize_head: bool, kv_cache: str | None,
         op_sum: bool, allow_roofline: bool, jobs: int, method: str,
         sparsity: str, phase: str, quality_file: str | None, plot_dir: str | None, fmt: str,
         out: str | None, force: bool) -> None:
    """Acceleration-quality Pareto frontier of pruning families.

    Simulates every family over a sparsity sweep, gives each design point a quality loss from
    a quality table (interpolated per family; beyond the table's last sparsity a point has no
    quality and is left out), then prints the Pareto frontier (highest speedup for lowest loss)
    and the bands: which family is fastest for each interval of allowed quality loss. For
    prefill it sets the study's bands (arXiv 2606.09080) beside them. With several --weights,
    each family in each weight format is a contender (static-depth+int4), all against the
    unpruned model with native weights: the joint frontier of pruning and quantization.

    Example: pis-pareto --phase prefill --batch 8 --seq-len 2048 --plot figs/

    Example: pis-pareto --phase decode --weights bf16,int8,int4 --plot figs/
    """
    t0 = time.perf_counter()
    quality = load_quality(quality_file)
    if out is not None and Path(out).exists() and not force:
        raise PisError(f"{out} exists; pass --force to overwrite it")
    methods = parse_methods(method)
    sim = Simulator(profile, allow_roofline=allow_roofline)
    if method.strip() == "all":
        methods = skip_unanswerable(methods, sim)
    sparsities = split_list(sparsity, "--sparsity", sparsity_value)
    grid = parse_grid(model, batch, seq_len, context, granularity, align, layer_sparsity, kv_cache, execution,
                      op_graph, variant, parse_weights(weights, sim.estimator.dtype), group_size, quantize_head)
    if grid.options.layer_sparsity is not None:
        sparsities = [float(np.mean(grid.options.layer_sparsity))]
    found = {w: [m for m in methods if quality.has(m, w)] for w in grid.weights}
    missing = [f"{m}" + ("" if w == "native" else f" ({w})") for w in grid.weights for m in methods
               if m not in found[w]]
    if not any(m != "dense" for ms in found.values() for m in ms):
        raise PisError(f"no quality data for {', '.join(missing)} in {quality.source}")
    if missing:
        click.echo(f"note: no quality data for {', '.join(missing)} in {quality.source}; "
                   "left out of the frontier", err=True)
    note_untimed_formats(grid.weights, sim)
    found_points = pd.concat([sim.design_points(found[opts.weights], sparsities, phase=phase, model=grid.models,
                                                batch=grid.batches, seq_len=grid.seq_lens, context=grid.contexts,
                                                options=opts, in_model=not op_sum, breakdown=plot_dir is not None,
                                                jobs=jobs)
                              for opts in grid.each_format() if found[opts.weights]], ignore_index=True)
    path = sim.path
    points = with_candidates(quality.annotate(found_points))
    out_of_range = points["quality_flag"] == FLAG_OUT_OF_RANGE
    if out_of_range.any():
        beyond = sorted(points.loc[out_of_range, "method"].unique())
        click.echo(f"note: {int(out_of_range.sum())} design points ({', '.join(beyond)}) lie beyond "
                   f"the quality table's range ({FLAG_OUT_OF_RANGE}); left out", err=True)
    points = points.assign(point_id=np.arange(len(points)))
    front = frontier(points)
    points["on_frontier"] = points["point_id"].isin(front["point_id"])
    points, front = points.drop(columns="point_id"), front.drop(columns="point_id")
    found = bands(points)
    study = STUDY_BANDS_PREFILL if phase == "prefill" else None
    if plot_dir is not None:
        from pis.simulator.plots import write_plots

        files = write_plots(points, front, plot_dir, study, force=force)
        click.echo(f"wrote {len(files)} figures to {plot_dir}", err=True)
    if fmt == "table":
        click.echo(f"profile: {path}  quality: {quality.source}  ({len(points)} design points in "
                   f"{time.perf_counter() - t0:.2f} s)", err=True)
    eff = efficiency(points)
    write_text(render(fmt, points, front, found, study, missing, quality.source, path, eff), out, force)
    if points["extrapolated"].any():
        click.echo(f"note: {int(points['extrapolated'].sum())} design points use ops outside the "
                   "profile's calibrated range (extrapolated=true)", err=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
