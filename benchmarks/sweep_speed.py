"""Benchmark: design points per second of a vectorized sweep (goal >= 100 000 on one core).

    python benchmarks/sweep_speed.py [--profile FILE] [--points-per-method N] [--repeats R]

Pins BLAS/OpenMP to one thread. Times the sweep only (the estimator is built once, as in the
CLI), over every family, both phases, and a grid of sparsity x batch x seq x context; prints
the median and spread of repeated runs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pis.profiles.shipped import resolve_profile  # noqa: E402
from pis.profiles.store import load_profile  # noqa: E402
from pis.simulator.estimator import Estimator  # noqa: E402
from pis.models import load_model  # noqa: E402
from pis.simulator.pruning import FAMILIES  # noqa: E402
from pis.simulator.sweep import sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sparsities", type=int, default=50, help="sparsity values in [0, 0.5)")
    args = ap.parse_args()

    est = Estimator(load_profile(resolve_profile(args.profile)), allow_roofline=True)
    spec = load_model(args.model)
    sparsities = np.round(np.linspace(0, 0.49, args.sparsities), 4)
    batches, seqs, ctxs = [1, 2, 4, 8, 16, 32, 64, 128], [128, 512, 1024, 2048], [1024, 4096, 16384]
    methods = list(FAMILIES)
    sweep(est, [spec], methods, sparsities[:2], ["prefill", "decode"], batches[:1], seqs[:1], ctxs[:1])  # warm caches
    times = []
    n = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        df = sweep(est, [spec], methods, sparsities, ["prefill", "decode"], batches, seqs, ctxs)
        times.append(time.perf_counter() - t0)
        n = len(df)
    med = statistics.median(times)
    print(f"profile: {resolve_profile(args.profile).name}  model: {args.model}  families: {len(methods)}")
    print(f"design points per sweep: {n}")
    print(f"sweep time: median {med:.3f} s  (min {min(times):.3f}, max {max(times):.3f}, {args.repeats} runs)")
    print(f"throughput: {n / med:,.0f} design points/s (one core; goal >= 100,000)")


if __name__ == "__main__":
    main()
