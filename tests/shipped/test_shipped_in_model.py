"""Shipped profiles' data: what their whole-decoder rows make of the in-model correction.

These tests read the measured profiles shipped in ``profiles/``; a recalibration may change
them, and only them. Tests of the code use the synthetic profile of ``tests/conftest.py``.
"""

from __future__ import annotations

import numpy as np

from pis.models import PRESETS
from pis.pruned import PruneOptions
from pis.simulator.api import Simulator
from pis.simulator.opsum import evaluate
from pis.simulator.points import Points
from pis.simulator.pruning import build_ops
from pis.simulator.sweep import sweep


def test_eager_gpu_decode_is_host_bound_so_width_pruning_does_not_pay():
    # The shipped H100 profile: at batch 1 an eager decode step waits on the host issuing ops.
    sim = Simulator("h100")
    spec = PRESETS["llama-3.1-8b"]
    eager = PruneOptions(execution="eager", op_graph="pis")
    df = sweep(sim, [spec], ["static-width", "static-depth"], [0.5], ["decode"], [1], [1], [4096], eager)
    by = df.set_index("method")
    fit = sim.correction.host_issue(spec, "decode", "concat")
    assert fit is not None and fit.rows > 0 and 1.0 < fit.us_per_dispatch < 100.0
    assert (df["in_model_factor"] > 1.0).all()  # slower than its kernels
    assert by.loc["static-width", "speedup"] < 1.15  # the host issues as many ops
    assert by.loc["static-depth", "speedup"] > 1.6  # half the layers: half the ops and kernels
    plain = sweep(sim, [spec], ["static-width"], [0.5], ["decode"], [1], [1], [4096], eager, in_model=False)
    assert plain["speedup"].iloc[0] > by.loc["static-width", "speedup"]


def test_cpu_profile_splits_gemms_from_other_ops_and_prices_the_framework():
    sim = Simulator("cpu-2core")
    correction = sim.correction
    assert not correction.host_bound
    spec = PRESETS["llama-3.1-8b"]
    pts = Points.make("decode", np.array([4]), np.array([1]), np.array([1024]), 0.0)
    sums = evaluate(sim.estimator, build_ops("dense", spec, pts, PruneOptions()), 1)
    head = sim.estimator.predict("gemm", {"m": 4, "n": spec.vocab, "k": spec.hidden}).time_us
    assert np.allclose(sums.outside_us, head) and 0 < head < sums.op_sum_us[0]
    got = correction.terms(spec, pts).latency_us(sums)
    # The profile timed the Hugging Face decoder at two FFN widths: GEMMs and other ops have
    # factors of their own, and it timed decoder_framework rows: a framework cost per dispatch.
    assert correction.splits()
    f_gemm, f_other = correction.factors(spec, pts)
    assert f_other[0] > f_gemm[0] > 1.0  # decode: the glue runs further from its profile than the GEMMs
    fw = correction.framework["decode"]
    gemms, others = sums.gemm_us - head, sums.op_sum_us - sums.gemm_us
    assert np.allclose(got, f_gemm * gemms + f_other * others + head + fw.cost_us(sums.dispatches))
    # The reference decoder's cache discipline has one width (one factor) and no framework rows.
    pre = correction.terms(spec, pts, "preallocated").latency_us(sums)
    assert np.allclose(pre, correction.factor(spec, pts, "preallocated") * (sums.op_sum_us - head) + head)


def test_cpu_profile_has_a_measured_glue_cost():
    est = Simulator("cpu-2core").estimator
    assert est.glue_us_per_dispatch is not None and est.launch_us_per_op is not None
    # A glue dispatch (views, slices, an index tensor from a list) costs more than a bare one.
    assert est.glue_us_per_dispatch > est.launch_us_per_op
