"""Where does a Hugging Face step's in-model time go: GEMMs or the rest?

Runs the CPU validation model (``CPU_SMALL``) dense and pruned, under ``torch.profiler`` (no
cache eviction, warm), and prints per step the self CPU time of ``aten::mm`` against all other
ops, beside the profile's op sums for the same model (GEMMs vs the rest, from
``pis-simulate --breakdown``). A single in-model factor would scale the whole op sum; this
shows which part of it really runs slower in the model.

    python benchmarks/experiments/gemm_share_in_model.py --profile cpu.parquet [--method low-rank] [--phase prefill --batch 1 --length 128]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from pis.executors import build_model
from pis.pruned import PruneOptions
from pis.simulator.api import Simulator
from pis.simulator.sweep import sweep
from pis.validate.suites import CPU_SMALL

STEPS = 5


def in_model_ms(method: str, sparsity: float, phase: str, batch: int, length: int) -> tuple[float, float]:
    """(GEMM, everything else) self CPU ms per step of the model under the profiler."""
    model = build_model(CPU_SMALL, method, sparsity, torch.device("cpu"), torch.float32, PruneOptions())
    seq, ctx = (length, 0) if phase == "prefill" else (1, length)
    step = model.step(phase, batch, seq, ctx)

    def call() -> None:
        if step.setup is not None:
            step.setup()
        step.run()

    for _ in range(3):
        call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(STEPS):
            call()
    mm = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "aten::mm")
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return mm / STEPS / 1e3, (total - mm) / STEPS / 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--method", action="append", default=None, help="repeatable; default dense and low-rank")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--phase", default="prefill", choices=["prefill", "decode"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=128, help="prompt length (prefill) or context (decode)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    sim = Simulator(args.profile)
    for method in args.method or ["dense", "low-rank"]:
        s = 0.0 if method == "dense" else args.sparsity
        gemm, rest = in_model_ms(method, s, args.phase, args.batch, args.length)
        row = sweep(sim, [CPU_SMALL], [method], [s], [args.phase], [args.batch], [args.length],
                    [max(args.length, 1)], breakdown=True, in_model=False).iloc[0]
        p_gemm = row["t_gemm_ms"]
        p_rest = sum(v for k, v in row.items() if k.startswith("t_") and k != "t_gemm_ms")
        print(f"{method} s={s} {args.phase} B={args.batch} L={args.length}: in the model GEMM {gemm:.2f} ms, "
              f"the rest {rest:.2f} ms; profile op sums GEMM {p_gemm:.2f} ms, the rest {p_rest:.2f} ms")


if __name__ == "__main__":
    main()
