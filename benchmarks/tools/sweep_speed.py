"""Design points per second of a vectorized sweep (goal >= 100 000 on one core).

    python benchmarks/tools/sweep_speed.py [--profile FILE|NAME] [--model NAME] [--sparsities N] [--repeats R]

Pins BLAS/OpenMP to one thread. Times the sweep only (the simulator is built and its in-model
correction fitted once, as in the CLI), over every family, both phases, and a grid of
sparsity x batch x seq x context; prints the median and spread of repeated sweeps.
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

from pis.models import load_model  # noqa: E402
from pis.simulator.api import Simulator  # noqa: E402
from pis.simulator.pruning import FAMILIES  # noqa: E402
from pis.simulator.sweep import sweep  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="profile file or shipped name (default: the default profile)")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sparsities", type=int, default=50, help="sparsity values in [0, 0.5)")
    args = ap.parse_args()

    sim = Simulator(args.profile, allow_roofline=True)
    spec = load_model(args.model)
    sparsities = np.round(np.linspace(0, 0.49, args.sparsities), 4)
    batches, seqs, ctxs = [1, 2, 4, 8, 16, 32, 64, 128], [128, 512, 1024, 2048], [1024, 4096, 16384]
    methods = list(FAMILIES)
    sweep(sim, [spec], methods, sparsities[:2], ["prefill", "decode"], batches[:1], seqs[:1], ctxs[:1])  # warm caches
    times = []
    n = 0
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        df = sweep(sim, [spec], methods, sparsities, ["prefill", "decode"], batches, seqs, ctxs)
        times.append(time.perf_counter() - t0)
        n = len(df)
    med = statistics.median(times)
    print(f"profile: {sim.path.name}  model: {args.model}  families: {len(methods)}")
    print(f"design points per sweep: {n}")
    print(f"sweep time: median {med:.3f} s  (min {min(times):.3f}, max {max(times):.3f}, {args.repeats} sweeps)")
    print(f"throughput: {n / med:,.0f} design points/s (one core; goal >= 100,000)")


if __name__ == "__main__":
    main()
