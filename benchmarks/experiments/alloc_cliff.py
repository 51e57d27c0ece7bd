"""The allocation cliff: what a fresh tensor over glibc's mmap threshold costs on this CPU.

Hugging Face's ``DynamicCache`` appends each layer's K and V by ``torch.cat``, a new tensor per
step. Above glibc's largest dynamic mmap threshold (32 MiB on 64-bit) every such tensor is a
fresh mapping, and its first write faults in and zeroes each page; below it, a freed block is
reused from the heap. This times ``torch.cat([cache, token])`` into a fresh tensor and into one
kept tensor (calibration's ``kv_concat`` bench) at sizes either side of the threshold, with
calibration's timing discipline (warm-up, adaptive repeats, median, last-level cache evicted),
and prints the difference per MiB: the first-touch cost. With ``--profile`` it also prints
what the simulator fitted to that profile's whole-decoder rows past the threshold
(the in-model correction's first-touch term, ``pis.simulator.inmodel.first_touch``), an
independent estimate of the same constant.

    python benchmarks/experiments/alloc_cliff.py [--mib 16,30,34,48,67,134] [--profile cpu-2core] [--prefill]

``--prefill`` asks whether prefill activations show the cliff too: it times the validation
model's Hugging Face prefill at 2048, 3072 and 4096 tokens, whose FFN activations (22, 33 and
44 MiB per tensor) straddle the threshold, and prints the time per token.
"""

from __future__ import annotations

import argparse

import torch

from pis.allocator import FRESH_ALLOC_THRESHOLD
from pis.calibrate.timing import TimingConfig, measure_step
from pis.executors.base import Step

ROW = 128  # one token of one KV head (fp32 head_dim 128): calibration's kv_concat row width
EFFORT = TimingConfig(warmup=3, min_repeats=10, max_repeats=50, target_s=0.5, flush_cache=True)


def cat_ms(mib: float) -> tuple[float, float, float, float]:
    """(fresh median, p10, p90, kept-output median) ms of appending one row to a ``mib`` cache."""
    rows = int(mib * 2**20 / (ROW * 4))
    cache, new = torch.randn(rows, ROW), torch.randn(1, ROW)
    out = torch.empty(rows + 1, ROW)
    cpu = torch.device("cpu")
    fresh = measure_step(Step(lambda: torch.cat([cache, new])), cpu, EFFORT)
    kept = measure_step(Step(lambda: torch.cat([cache, new], out=out)), cpu, EFFORT)
    return fresh[0], fresh[1], fresh[2], kept[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", default="16,30,34,48,67,134", help="comma list of cache sizes, MiB")
    ap.add_argument("--profile", help="also print the first-touch cost fitted to this profile")
    ap.add_argument("--prefill", action="store_true", help="also time Hugging Face prefill across the threshold")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"threshold: {FRESH_ALLOC_THRESHOLD / 2**20:g} MiB; {torch.get_num_threads()} threads")
    print(f"{'MiB':>6} {'fresh ms':>9} {'p10-p90':>13} {'kept ms':>8} {'fresh GB/s':>10} {'kept GB/s':>9} "
          f"{'extra µs/MiB':>12}")
    for mib in (float(m) for m in args.mib.split(",")):
        fresh, p10, p90, kept = cat_ms(mib)
        gbs = lambda ms: 2 * mib * 2**20 / (ms * 1e6)  # noqa: E731 - read + write
        print(f"{mib:6g} {fresh:9.3f} {p10:6.3f}-{p90:<6.3f} {kept:8.3f} {gbs(fresh):10.1f} {gbs(kept):9.1f} "
              f"{(fresh - kept) * 1e3 / mib:12.0f}")
    if args.profile:
        from pis.simulator.api import Simulator

        fit = Simulator(args.profile).correction.first_touch()
        print(f"fitted to {args.profile}'s decoder rows: "
              + (f"{fit.us_per_mib:.0f} µs/MiB ({fit.rows} rows)" if fit else "none (no row past the threshold)"))

    if args.prefill:
        prefill_per_token()


def prefill_per_token() -> None:
    """The validation model's Hugging Face prefill per token, its FFN activations either side
    of the threshold (a cliff would show as a step in µs per token)."""
    from pis.executors import build_model
    from pis.validate.run import EFFORT
    from pis.validate.suites import CPU_SMALL

    cpu = torch.device("cpu")
    model = build_model(CPU_SMALL, "dense", 0.0, cpu, torch.float32)
    for batch in (2, 3, 4):
        seq = 1024
        ms = measure_step(model.step("prefill", batch, seq, 0), cpu, EFFORT["quick"])[0]
        act = batch * seq * CPU_SMALL.ffn * 4 / 2**20
        print(f"prefill B={batch} S={seq}: FFN activation {act:.0f} MiB per tensor, "
              f"{ms:.1f} ms, {ms * 1e3 / (batch * seq):.1f} µs per token")


if __name__ == "__main__":
    main()
