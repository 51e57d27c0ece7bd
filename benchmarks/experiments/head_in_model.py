"""What does the LM head cost inside a Hugging Face model, against its GEMM timed alone?

The in-model factor (:mod:`pis.simulator.inmodel`) is fitted to whole-decoder rows that have no
LM head, so whether it should scale the head is a question for measurement (the correction
prices the head at its own row, unscaled). This times the validation model (``CPU_SMALL``, or
``--layers``) with its vocabulary (8192) and with a vocabulary of 64, interleaved over
``--rounds``, and prints the difference of the medians (the head in the model) beside the
head's GEMM timed with calibration's bench, minus the 64-wide one.
``--reference`` asks the same of pis's reference decoder (the routed families' executor), whose
whole-decoder rows are its forward without the LM head: it times the model with and without it.

    python benchmarks/experiments/head_in_model.py [--point decode:1:1024 ...] [--rounds 2] [--reference]

Points are ``decode:BATCH:CONTEXT`` or ``prefill:BATCH:SEQ``. The CPU only: that is where the
factor scales op sums (on a GPU the head is a sliver of the step).
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from pis.calibrate.grid import timing_config
from pis.calibrate.point import point
from pis.calibrate.runner import measure_point
from pis.calibrate.timing import make_timer, measure_step
from pis.executors import build_model
from pis.pruned import PruneOptions
from pis.validate.run import EFFORT
from pis.validate.suites import CPU_SMALL

SMALL_VOCAB = 64


def head_in_model(phase: str, batch: int, length: int, rounds: int, layers: int,
                    reference: bool = False) -> dict[str, float]:
    """Medians (ms) of the model with its head and with a negligible one (Hugging Face: vocabulary
    64; ``reference``: no head), and of the head's GEMM alone."""
    dev = torch.device("cpu")
    seq, ctx = (length, 0) if phase == "prefill" else (1, length)
    times: dict[str, list[float]] = {"with": [], "without": []}
    if reference:  # one model; the step without logits is what the whole-decoder rows time
        spec = dataclasses.replace(CPU_SMALL, layers=layers)
        model = build_model(spec, "dense", 0.0, dev, torch.float32, PruneOptions(kv_cache="preallocated"),
                            reference_dense=True)
        steps = {k: model.step(phase, batch, seq, ctx, logits=k == "with") for k in times}
    for _ in range(rounds):
        for k in times:
            if not reference:  # Hugging Face: rebuilt each round with either vocabulary
                steps = {}  # the previous model goes before the next is built
                spec = dataclasses.replace(CPU_SMALL, vocab=CPU_SMALL.vocab if k == "with" else SMALL_VOCAB,
                                           layers=layers)
                steps[k] = build_model(spec, "dense", 0.0, dev, torch.float32, PruneOptions()).step(
                    phase, batch, seq, ctx)
            times[k].append(measure_step(steps[k], dev, EFFORT["full"])[0])
    timer = make_timer(dev, timing_config("quick", "cpu", False))

    def gemm_ms(n: int) -> float:
        return measure_point(point("gemm", m=batch, n=n, k=CPU_SMALL.hidden), "fp32", dev, timer)["median_us"] / 1e3

    full, small = (float(np.median(v)) for v in times.values())
    alone = gemm_ms(CPU_SMALL.vocab) - (0.0 if reference else gemm_ms(SMALL_VOCAB))
    return dict(with_head_ms=full, small_head_ms=small, head_in_model_ms=full - small, head_alone_ms=alone)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", action="append", default=None,
                    help="decode:B:C or prefill:B:S (repeatable; default: decode at 1:1024, 4:2048, 8:512)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--layers", type=int, default=CPU_SMALL.layers)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reference", action="store_true", help="pis's reference decoder, with and without its head")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for spec in args.point or ["decode:1:1024", "decode:4:2048", "decode:8:512"]:
        phase, b, n = spec.split(":")
        r = head_in_model(phase, int(b), int(n), args.rounds, args.layers, args.reference)
        print(f"{phase} B={b} {'S' if phase == 'prefill' else 'C'}={n}: model {r['with_head_ms']:.2f} ms, "
              f"{'no head' if args.reference else f'vocab {SMALL_VOCAB}'} {r['small_head_ms']:.2f} ms -> head in the model "
              f"{r['head_in_model_ms']:.2f} ms; alone {r['head_alone_ms']:.2f} ms "
              f"(ratio {r['head_in_model_ms'] / r['head_alone_ms']:.2f})", flush=True)


if __name__ == "__main__":
    main()
