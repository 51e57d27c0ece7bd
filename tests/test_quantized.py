"""Quantized weights: op graphs, pricing paths, quantized linears, quality rule, Pareto, suites."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from pis.errors import PisError, Unsupported
from pis.executors.quantized import QuantLinear, quantize_int4, quantize_linears
from pis.models import PRESETS
from pis.profiles.schema import OPS, QUANTIZED_GEMM, op_bytes
from pis.profiles.store import Profile, normalize_rows, write_profile
from pis.pruned import PruneOptions, weight_format
from pis.simulator.api import Simulator
from pis.simulator.estimator import Estimator
from pis.simulator.opgraph import LM_HEAD
from pis.simulator.opmodel import EXACT, ROOFLINE
from pis.simulator.pareto import bands, compare_with_study, family_of, with_candidates
from pis.simulator.points import Points
from pis.simulator.pruning import build_ops
from pis.simulator.quality import RULE_COMBINED, RULE_TABLE, from_frame, load_quality

SPEC = PRESETS["llama-3.1-8b"]


def _decode(batch: int = 1) -> Points:
    return Points.make("decode", np.array([batch]), np.array([1]), np.array([4096]), np.array([0.25]))


def _with_quantized_rows(profile: Profile, op: str, scale: float) -> Profile:
    """``profile`` plus ``op`` rows: its gemm rows at ``scale`` times their latency."""
    rows = profile.rows
    g = rows[(rows["op"] == "gemm") & (rows["status"] == "ok")].copy()
    g["op"] = op
    for c in ("median_us", "p10_us", "p90_us"):
        g[c] = g[c] * scale
    if "group_size" in OPS[op].columns:
        g["group_size"] = 128
    return Profile(rows=normalize_rows(pd.concat([rows, g], ignore_index=True)), meta=dict(profile.meta))


# -- op graphs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["int8", "int4", "fp8"])
def test_decoder_gemms_take_the_format_and_the_lm_head_keeps_the_activation_dtype(weights):
    groups = build_ops("static-depth", SPEC, _decode(), PruneOptions(weights=weights, execution="eager"))
    op = QUANTIZED_GEMM[weights]
    assert not [g for g in groups if g.op == "gemm" and g.name != LM_HEAD and g.category == "gemm"]
    assert [g.op for g in groups if g.name == LM_HEAD] == ["gemm"]
    assert any(g.op == op for g in groups)
    head = build_ops("dense", SPEC, _decode(), PruneOptions(weights=weights, quantize_head=True, execution="eager"))
    assert [g.op for g in head if g.name == LM_HEAD] == [op]


def test_native_weights_leave_the_op_graph_as_it_was():
    a = build_ops("low-rank", SPEC, _decode(), PruneOptions(execution="eager"))
    b = build_ops("low-rank", SPEC, _decode(), PruneOptions(weights="native", execution="eager"))
    assert [(g.op, g.name) for g in a] == [(g.op, g.name) for g in b]
    assert not any(g.op in QUANTIZED_GEMM.values() for g in a)


def test_int4_groups_by_the_largest_divisor_of_an_odd_rank():
    groups = build_ops("low-rank", SPEC, _decode(), PruneOptions(weights="int4", group_size=128, execution="eager"))
    w4 = [g for g in groups if g.op == "gemm_w4"]
    ks = np.concatenate([np.ravel(g.shape["k"]) for g in w4])
    gs = np.concatenate([np.ravel(g.shape["group_size"]) for g in w4])
    assert np.all(ks % gs == 0) and np.all(gs <= 128)
    assert np.any(gs < 128)  # some rank is not a multiple of 128


def test_quantized_weights_move_fewer_bytes():
    shape = {"m": 1, "n": 4096, "k": 4096, "group_size": 128}
    native = float(op_bytes("gemm", shape, "bf16"))
    assert float(op_bytes("gemm_w8", shape, "bf16")) < 0.6 * native
    assert float(op_bytes("gemm_w4", shape, "bf16")) < 0.35 * native


def test_unknown_weight_format_is_one_clear_error():
    with pytest.raises(PisError, match="--weights"):
        PruneOptions(weights="int3")
    assert weight_format("BF16") == weight_format("fp32") == "native"
    with pytest.raises(PisError, match="not a weight format"):
        weight_format("q4_k_m")


# -- pricing paths -----------------------------------------------------------------------------

def test_untimed_quantized_gemm_is_priced_by_roofline_and_flagged(synthetic):
    est = Estimator(synthetic.profile)
    shape = {"m": np.array([1, 4096]), "n": np.array([4096, 4096]), "k": np.array([4096, 4096])}
    pred = est.predict("gemm_w8", shape)
    native = est.predict("gemm", shape)
    assert np.all(pred.source == ROOFLINE) and pred.extrapolated.all()
    # Memory-bound at M = 1: fewer weight bytes pay; compute-bound at M = 4096: they do not.
    assert pred.time_us[0] < 0.7 * native.time_us[0]
    assert pred.time_us[1] == pytest.approx(native.time_us[1], rel=0.05)


def test_timed_quantized_gemm_is_an_exact_hit(synthetic):
    est = Estimator(_with_quantized_rows(synthetic.profile, "gemm_w8", 0.5))
    shape = {"m": np.array([64]), "n": np.array([4096]), "k": np.array([4096])}
    pred = est.predict("gemm_w8", shape)
    assert pred.source[0] == EXACT and not pred.extrapolated[0]
    assert pred.time_us[0] == pytest.approx(0.5 * float(Estimator(synthetic.profile).op_time("gemm", shape)[0]))


def test_quantized_sweep_is_against_native_dense(synthetic_file):
    sim = Simulator(synthetic_file)
    opts = PruneOptions(execution="eager")
    native = sim.predict(SPEC, ["dense", "static-depth"], 0.25, "decode", options=opts)
    int8 = sim.predict(SPEC, ["dense", "static-depth"], 0.25, "decode",
                       options=PruneOptions(execution="eager", weights="int8"))
    assert list(int8["weights"]) == ["int8", "int8"] and list(native["weights"]) == ["bf16", "bf16"]
    np.testing.assert_allclose(int8["dense_latency_ms"], native["dense_latency_ms"])
    dense8 = int8[int8["method"] == "dense"].iloc[0]
    assert dense8["speedup"] > 1.2  # decode at batch 1 streams weights: int8 halves them
    assert dense8["theoretical_speedup"] > dense8["speedup"] * 0.9
    assert int8.iloc[1]["speedup"] > native.iloc[1]["speedup"]


def test_simulate_cli_weights(synthetic_file):
    from pis.simulator.cli import main

    res = CliRunner().invoke(main, ["--profile", synthetic_file, "--method", "static-depth", "--sparsity", "0.25",
                                    "--phase", "decode", "--weights", "bf16,int4", "--format", "csv"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(pd.io.common.StringIO(res.stdout))
    assert list(df["weights"]) == ["bf16", "int4"]
    assert df["frac_roofline"].iloc[1] > 0 and bool(df["extrapolated"].iloc[1])
    assert "no gemm_w4 rows" in res.stderr
    bad = CliRunner().invoke(main, ["--profile", synthetic_file, "--weights", "int3"])
    assert bad.exit_code == 2 and "--weights" in bad.output and "Traceback" not in bad.output


def test_quantized_gemms_sit_outside_the_in_model_factor(synthetic):
    from pis.simulator.opsum import evaluate

    est = Estimator(_with_quantized_rows(synthetic.profile, "gemm_w8", 0.5))
    pts = _decode()
    groups = build_ops("dense", SPEC, pts, PruneOptions(weights="int8", execution="eager"))
    sums = evaluate(est, groups, 1)
    quant = sum(float(np.sum(est.predict(g.op, {k: np.broadcast_to(v, (1,)) for k, v in g.shape.items()}).time_us
                             * np.broadcast_to(g.count, (1,)))) for g in groups if g.op == "gemm_w8")
    head = [g for g in groups if g.name == LM_HEAD][0]
    head_us = float(est.predict("gemm", {k: np.broadcast_to(v, (1,)) for k, v in head.shape.items()}).time_us[0])
    assert float(sums.outside_us[0]) == pytest.approx(quant + head_us, rel=1e-9)


# -- quantized linears -------------------------------------------------------------------------

@pytest.mark.parametrize("weights,tol", [("int8", 0.02), ("int4", 0.15)])
def test_quant_linear_computes_what_the_linear_does(weights, tol):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 192, bias=False)
    x = torch.randn(3, 5, 256)
    q = QuantLinear(lin, weights, group_size=64)
    with torch.no_grad():
        ref, got = lin(x), q(x)
    assert got.shape == ref.shape
    assert float((got - ref).norm() / ref.norm()) < tol


def test_int4_quantizer_reconstructs_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(16, 256)
    q, sz = quantize_int4(w, 64)
    scale, zero = sz[..., 0].t(), sz[..., 1].t()  # [n, groups]
    back = (q.reshape(16, 4, 64).float() - 8) * scale[..., None] + zero[..., None]
    assert float((back.reshape(16, 256) - w).abs().max()) <= float(scale.max()) / 2 + 1e-5


def test_quantize_linears_replaces_every_dense_linear():
    model = torch.nn.Sequential(torch.nn.Linear(128, 64, bias=False),
                                torch.nn.Sequential(torch.nn.Linear(64, 32, bias=False), torch.nn.ReLU()))
    assert quantize_linears(model, "int8") == 2
    assert all(not isinstance(m, torch.nn.Linear) for m in model.modules())


def test_fp8_needs_a_gpu():
    with pytest.raises(Unsupported):
        QuantLinear(torch.nn.Linear(64, 64, bias=False), "fp8")


def test_hf_model_with_quantized_weights_runs_and_keeps_its_lm_head():
    from pis.executors import build_model
    from pis.executors.base import PROJECTIONS
    from pis.validate.suites import CPU_TINY

    m = build_model(CPU_TINY, "low-rank", 0.5, torch.device("cpu"), torch.float32,
                    PruneOptions(weights="int4", kv_cache="concat"))
    quant = [mod for mod in m.model.modules() if isinstance(mod, QuantLinear)]
    assert len(quant) == 2 * len(PROJECTIONS) * CPU_TINY.layers  # both low-rank factors of each
    assert isinstance(m.model.lm_head, torch.nn.Linear)
    step = m.step("decode", 1, 1, 16)
    step.setup()
    step.run()
    with pytest.raises(PisError, match="reference decoder"):
        build_model(CPU_TINY, "dynamic-depth", 0.5, torch.device("cpu"), torch.float32, PruneOptions(weights="int8"))


# -- calibration -------------------------------------------------------------------------------

def test_quantized_benches_run_on_the_cpu_and_fp8_is_skipped():
    from pis.calibrate.benches import build

    cpu = torch.device("cpu")
    for op, shape in (("gemm_w8", dict(m=2, n=256, k=256)), ("gemm_w4", dict(m=2, n=256, k=256, group_size=128))):
        bench = build(op, shape, torch.float32, cpu)
        out = bench.fn()
        assert tuple(out.shape) == (2, 256)
    with pytest.raises(Unsupported):
        build("gemm_fp8", dict(m=2, n=256, k=256), torch.float32, cpu)


def test_grids_hold_quantized_gemms():
    from pis.calibrate.grid import build_grid, model_pairs

    name, pairs, dims = model_pairs("llama-3.1-8b")
    cpu = build_grid("quick", "cpu", "fp32")
    cuda = build_grid("quick", "cuda", "bf16", pairs, name, dims)
    ops_cpu = {p.op for p in cpu.points}
    assert {"gemm_w8", "gemm_w4"} <= ops_cpu and "gemm_fp8" not in ops_cpu
    w4 = [p.shape_dict for p in cuda.points if p.op == "gemm_w4"]
    assert w4 and all(s["k"] % s["group_size"] == 0 for s in w4)
    assert (4096, 4096) in {(s["n"], s["k"]) for s in w4}  # the model's own widths
    assert any(p.op == "gemm_fp8" for p in cuda.points)


# -- quality -----------------------------------------------------------------------------------

def _table(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["method", "weights", "sparsity", "quality_loss_pct"])


def test_pruning_and_quantization_losses_combine():
    q = from_frame(_table([("static-depth", "", 0.5, 20.0), ("dense", "int4", 0.0, 2.0)]),
                   known=("dense", "static-depth"))
    got = float(q.loss("static-depth", 0.5, "int4")[0])
    assert got == pytest.approx(100 * (1 - 0.8 * 0.98))
    assert q.rule("static-depth", "int4") == RULE_COMBINED and q.rule("static-depth") == RULE_TABLE
    assert float(q.loss("dense", 0.0, "int4")[0]) == pytest.approx(2.0)
    assert not q.has("static-depth", "int8")  # no int8 row: no answer, never a guess


def test_own_measurements_replace_the_rule():
    q = from_frame(_table([("static-depth", "native", 0.5, 20.0), ("dense", "int4", 0.0, 2.0),
                           ("static-depth", "int4", 0.5, 30.0)]), known=("dense", "static-depth"))
    assert float(q.loss("static-depth", 0.5, "int4")[0]) == pytest.approx(30.0)
    assert q.rule("static-depth", "int4") == RULE_TABLE


def test_bad_quality_weights_are_one_clear_error():
    with pytest.raises(PisError, match="weights"):
        from_frame(_table([("dense", "int3", 0.0, 1.0)]), known=("dense",))
    with pytest.raises(PisError, match="sparsity 0"):
        from_frame(_table([("dense", "int4", 0.5, 1.0)]), known=("dense",))


def test_default_quality_table_has_every_format():
    q = load_quality()
    for w in ("int8", "int4", "fp8"):
        assert q.has("dense", w) and q.has("static-depth", w)
        assert float(q.loss("dense", 0.0, w)[0]) >= 0
    assert float(q.loss("dense", 0.0, "int4")[0]) > float(q.loss("dense", 0.0, "int8")[0])


# -- Pareto ------------------------------------------------------------------------------------

def test_candidates_compete_across_weight_formats():
    df = pd.DataFrame({"method": ["dense", "static-depth", "dense", "static-depth"],
                       "weights": ["bf16", "bf16", "int4", "int4"], "sparsity": [0, 0.25, 0, 0.25],
                       "speedup": [1.0, 1.3, 2.0, 2.6], "quality_loss_pct": [0.0, 3.0, 1.0, 4.0]})
    c = with_candidates(df)
    assert list(c["candidate"]) == ["dense+bf16", "static-depth+bf16", "dense+int4", "static-depth+int4"]
    b = bands(c)
    assert list(b["family"]) == ["dense+bf16", "dense+int4", "static-depth+int4"]
    assert family_of("static-depth+int4") == "static-depth"
    study = pd.DataFrame({"family": ["static-depth"], "loss_from": [4.0], "loss_to": [6.0]})
    assert float(compare_with_study(b, study)["agreement"].iloc[0]) == pytest.approx(1.0)
    assert list(with_candidates(df[df["weights"] == "bf16"])["candidate"]) == ["dense", "static-depth"]


def test_pareto_cli_draws_the_joint_frontier(synthetic_file, tmp_path):
    from pis.simulator.pareto_cli import main

    res = CliRunner().invoke(main, ["--profile", synthetic_file, "--phase", "decode", "--method", "static-depth",
                                    "--sparsity", "0,0.25,0.5", "--weights", "bf16,int8,int4", "--format", "json",
                                    "--plot", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout)
    cands = {p["candidate"] for p in out["points"]}
    assert {"dense+bf16", "dense+int8", "dense+int4", "static-depth+int4"} <= cands
    assert any(p["quality_rule"] == RULE_COMBINED for p in out["points"])
    assert (tmp_path / "figs").is_dir() and list((tmp_path / "figs").glob("pareto_*.png"))


# -- validation ----------------------------------------------------------------------------------

def test_cpu_full_suite_validates_quantized_families():
    from pis.validate.suites import suite_configs, with_weights

    cfgs = suite_configs("full", "cpu")
    quant = {(c.method, c.weights, c.phase) for c in cfgs if c.weights != "native"}
    for method in ("dense", "static-depth", "static-width", "low-rank"):
        for w in ("int8", "int4"):
            assert {(method, w, "prefill"), (method, w, "decode")} <= quant
    more = with_weights(suite_configs("quick", "cpu"), ["native", "int8"])
    assert all(c.backend == "hf" for c in more if c.weights == "int8")
    assert len({c.label for c in more}) == len(more)


def test_quantized_dense_speedup_is_over_native_dense():
    from pis.validate.report import with_speedups

    base = dict(model="m", layers=2, backend="hf", phase="decode", batch=1, seq_len=1, context_len=64, status="ok")
    rep = pd.DataFrame([dict(base, config="dense", method="dense", weights="native", measured_ms=10.0,
                             predicted_ms=11.0),
                        dict(base, config="dense+int8", method="dense", weights="int8", measured_ms=5.0,
                             predicted_ms=5.0)])
    out = with_speedups(rep)
    assert np.isnan(out["measured_speedup"].iloc[0])
    assert out["measured_speedup"].iloc[1] == pytest.approx(2.0)
    assert out["predicted_speedup"].iloc[1] == pytest.approx(2.2)


def test_written_profile_keeps_group_size(synthetic, tmp_path):
    from pis.profiles.store import load_profile

    path = tmp_path / "q.parquet"
    write_profile(_with_quantized_rows(synthetic.profile, "gemm_w4", 0.4), path)
    rows = load_profile(str(path)).rows
    assert set(rows.loc[rows["op"] == "gemm_w4", "group_size"]) == {128}
