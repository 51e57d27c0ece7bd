"""`pis-calibrate`: measure a latency profile of this machine's GPU or CPU."""

from __future__ import annotations

from pathlib import Path

import click

from pis import __version__
from pis.errors import handle_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--device", default="cpu", show_default=True, metavar="cuda:N|cpu",
              help="Device to calibrate.")
@click.option("--out", required=True, type=click.Path(dir_okay=True, path_type=Path), metavar="FILE.parquet",
              help="Profile to write. It is also the checkpoint: rerunning the same command resumes it.")
@click.option("--grid", default="quick", show_default=True, metavar="tiny|quick|default|full",
              help="Point set: tiny (tests, seconds), quick (a first profile in minutes), default "
                   "(recommended), full (denser; hours). Sizes, times and the fidelity of each: "
                   "docs/calibration.md (python benchmarks/tools/grid_sizes.py prints the sizes).")
@click.option("--dtype", default=None, metavar="bf16|fp16|fp32",
              help="Element type. Default: bf16 on CUDA, fp32 on CPU (bf16/fp16 on CPU are allowed "
                   "and measured as they run, usually far slower).")
@click.option("--model", default=None, metavar="NAME|config.json",
              help="Also measure this model's exact GEMM widths and those of its width-pruned "
                   "variants (sparsity 0..0.9, align 64) at every grid M.")
@click.option("--time-budget", "time_budget", type=float, default=None, metavar="MIN",
              help="Stop cleanly after MIN minutes; what is measured is saved (rerun to resume).")
@click.option("--threads", type=int, default=None, metavar="N",
              help="torch CPU threads (default: torch's default, usually one per core).")
@click.option("--cuda-graphs/--no-cuda-graphs", default=True, show_default=True,
              help="CUDA: time CUDA-graph replays of each op, so the profile holds kernel time only "
                   "(eager events also catch host work that outlasts the L2 flush, e.g. cuDNN "
                   "attention or 2:4 planning); ops that cannot be captured fall back to eager "
                   "(their backend lacks '+graph').")
@click.option("--only", default=None, metavar="OP[,OP]",
              help="Measure only these ops of the grid (e.g. host_glue, or gemm_2to4), into their "
                   "own file; add them to a profile with `pis-profile merge`.")
@click.option("--decoder-passes", "decoder_passes", type=int, default=None, metavar="N",
              help="Measure each whole-decoder point N times, spread over the run (first, in its "
                   "place, last), and keep the median pass: these rows set the absolute level of "
                   "every in-model prediction, and a shared machine's slow minutes move them. "
                   "Default: 3 on the CPU's default and full grids, 1 elsewhere.")
@click.option("--force", is_flag=True, help="Overwrite --out even if it holds another profile or another file.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True, metavar="N",
              help="Rewrite --out every N points (and at least every 20 s).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--point-delay", type=float, default=0.0, hidden=True)
@click.version_option(__version__, prog_name="pis-calibrate")
@handle_errors
def main(device: str, out: Path, grid: str, dtype: str | None, model: str | None, time_budget: float | None,
         threads: int | None, cuda_graphs: bool, only: str | None, decoder_passes: int | None, force: bool,
         checkpoint_every: int, no_progress: bool, point_delay: float) -> None:
    """Measure the latency of every op a (pruned) decoder runs on this device and write a profile.

    Each point (op and shape) is timed after warm-up over adaptive repeats; the profile keeps the
    median and 10th/90th percentiles in µs. CUDA timings come from CUDA events around the op with
    the L2 cache flushed before every repeat; CPU timings from time.perf_counter.

    \b
    Examples:
      pis-calibrate --device cpu --out cpu.parquet                 # quick grid
      pis-calibrate --device cpu --grid default --out cpu.parquet  # the recommended profile
      pis-calibrate --device cuda:0 --grid default --out h100.parquet --model llama-3.1-8b
      pis-calibrate --device cuda:0 --out h100.parquet --time-budget 30   # resumable

    Check the result with `pis-profile info FILE` and `pis-profile validate FILE`.
    """
    # torch is imported here, not at module import, so `--help` stays fast.
    from pis.calibrate.runner import RunOptions, calibrate

    result = calibrate(RunOptions(
        out=out, device=device, grid=grid, dtype=dtype, model=model, time_budget_min=time_budget,
        threads=threads, cuda_graphs=cuda_graphs, force=force, checkpoint_every=checkpoint_every,
        progress=not no_progress, point_delay_s=point_delay, decoder_passes=decoder_passes,
        only=tuple(o.strip() for o in only.split(",") if o.strip()) if only is not None else None))
    if result.status == "complete":
        skipped = {k: v for k, v in result.counts.items() if k != "ok"}
        extra = f" ({', '.join(f'{v} {k}' for k, v in sorted(skipped.items()))})" if skipped else ""
        click.echo(f"wrote {result.path}: {result.total} points, {result.measured} measured in this run{extra}",
                   err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
