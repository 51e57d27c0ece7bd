"""Calibration grid sizes, from the code: points per grid and device kind, and profiles' durations.

Prints a markdown table of the points each named grid (``tiny``, ``quick``, ``default``,
``full``) measures on each device kind, without ``--model`` and with the model ``pis-validate``
runs there (CPU: ``benchmarks/cpu-small.json``, CUDA: ``llama-3.1-8b``), split into per-op points
and whole-decoder points (the ops of :data:`pis.profiles.schema.WHOLE_DECODER_OPS`). Dtypes are
the calibration defaults: fp32 on a CPU, bf16 on CUDA. A whole-decoder point counts once here;
a CPU calibration measures each of them in three passes (``pis-calibrate --decoder-passes``).

With ``--profile`` (repeatable; a file or a shipped name) it also prints one line per profile:
its grid, device, row count and measured duration, from the profile's metadata.

    python benchmarks/tools/grid_sizes.py [--profile cpu-2core --profile h100 ...]

Takes a few seconds (building grids imports no torch).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pis.calibrate.grid import GRID_NAMES, build_grid, model_pairs
from pis.profiles.schema import QUANTIZED_GEMM, WHOLE_DECODER_OPS

#: (device kind, calibration dtype, the validation suites' model there)
DEVICES: tuple[tuple[str, str, str], ...] = (
    ("cpu", "fp32", "benchmarks/cpu-small.json"),
    ("cuda", "bf16", "llama-3.1-8b"),
)
#: Where relative model paths are resolved from (the repository root).
ROOT = Path(__file__).resolve().parents[2]


def grid_counts(device_kind: str, dtype: str, model: str | None = None) -> dict[str, tuple[int, int, int]]:
    """Grid name -> (per-op points, of which quantized GEMMs, whole-decoder points) on ``device_kind``,
    optionally with ``--model``."""
    pairs, name, dims = [], None, None
    if model is not None:
        path = ROOT / model
        name, pairs, dims = model_pairs(str(path) if path.exists() else model)
    out = {}
    for grid in GRID_NAMES:
        points = build_grid(grid, device_kind, dtype, pairs, name, dims).points
        decoder = sum(p.op in WHOLE_DECODER_OPS for p in points)
        quantized = sum(p.op in QUANTIZED_GEMM.values() for p in points)
        out[grid] = (len(points) - decoder, quantized, decoder)
    return out


def size_table() -> str:
    """The markdown table of every grid's point counts."""
    lines = ["| device | dtype | `--model` | grid | per-op points | of which quantized GEMMs "
             "| whole-decoder points | total |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for kind, dtype, model in DEVICES:
        for m in (None, model):
            for grid, (per_op, quantized, decoder) in grid_counts(kind, dtype, m).items():
                lines.append(f"| {kind} | {dtype} | {f'`{m}`' if m else '–'} | {grid} | {per_op:,} | {quantized:,} "
                             f"| {decoder:,} | {per_op + decoder:,} |")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{seconds:,.1f} s ({h} h {m} min {s} s)" if h else f"{seconds:,.1f} s ({m} min {s} s)"


def profile_line(name: str) -> str:
    """One line about a profile: grid, device, rows and measured duration (from its metadata)."""
    from pis.profiles.shipped import resolve_profile
    from pis.profiles.store import read_profile

    path = resolve_profile(name)
    prof = read_profile(path)
    meta = prof.meta
    model = (meta.get("model_shapes") or {}).get("model")
    duration = meta.get("duration_s")
    parts = [f"grid {meta.get('grid_name', 'not recorded')}" + (f" --model {model}" if model else ""),
             f"{meta.get('device_name', 'unknown device')} ({meta.get('device_kind', '?')}, {meta.get('dtype', '?')})",
             f"{len(prof.rows):,} rows",
             f"measured in {_duration(float(duration))}" if duration is not None else "duration not recorded"]
    if meta.get("complete") is False:
        parts.append("incomplete (time-boxed)")
    return f"{name} ({path.name}): " + ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", action="append", default=[], metavar="FILE|NAME",
                    help="also print this profile's grid, device, rows and duration (repeatable)")
    args = ap.parse_args()
    print(size_table())
    if args.profile:
        print()
        for name in args.profile:
            print(f"- {profile_line(name)}")


if __name__ == "__main__":
    main()
