"""pis-validate: the harness end to end (tiny suite), the real models, and real routing.

Accuracy is not asserted here (the profile is synthetic); the harness, the models' shapes and
the work the routed families really do are.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from pis.calibrate.timing import TimingConfig, measure_step  # noqa: E402
from pis.errors import Unsupported  # noqa: E402
from pis.executors import build_model  # noqa: E402
from pis.executors import reference as rd  # noqa: E402
from pis.executors.base import Step  # noqa: E402
from pis.executors.hf import PrunedLayer  # noqa: E402
from pis.models import ModelSpec  # noqa: E402
from pis.profiles.store import write_profile  # noqa: E402
from pis.pruned import PruneOptions, layers_kept, lowrank_rank, pruned_ffn, pruned_heads  # noqa: E402
from pis.validate.cli import main  # noqa: E402
from pis.validate.report import REPORT_COLUMNS, combine_rounds, summarize_report, with_speedups  # noqa: E402
from pis.validate.suites import suite_configs  # noqa: E402

SPEC = ModelSpec("test-tiny", hidden=128, ffn=256, layers=2, heads=4, kv_heads=2, head_dim=32, vocab=512)
CPU = torch.device("cpu")


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


# --- harness, end to end -----------------------------------------------------------------------

def _fake_drift(monkeypatch, factor: float) -> None:
    """Probe points 're-measure' at ``factor`` x their stored time (no real timing)."""
    import pis.validate.drift as drift

    def fake(p, dtype, device, timer, warn=None):
        stored = {(op, tuple(sorted(sh.items()))): us for op, sh, us in drift.probe_rows(prof, dtype)}
        return {"status": "ok", "median_us": factor * stored[(p.op, tuple(sorted(p.shape_dict.items())))]}

    real = drift.measure_drift

    def measure(profile, device, dtype):
        nonlocal prof
        prof = profile
        return real(profile, device, dtype)
    prof = None
    monkeypatch.setattr(drift, "measure_point", fake)
    monkeypatch.setattr(drift, "measure_drift", measure)


def test_tiny_suite_end_to_end(synthetic_file, tmp_path, monkeypatch):
    _fake_drift(monkeypatch, 1.25)
    out = tmp_path / "report.csv"
    res = _run("--device", "cpu", "--profile", synthetic_file, "--suite", "tiny", "--out", str(out))
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    configs = suite_configs("tiny", "cpu")
    assert list(df.columns) == list(REPORT_COLUMNS)
    assert len(df) == len(configs) >= 2
    assert (df["status"] == "ok").all()
    for col in ("measured_ms", "predicted_ms", "error_pct"):
        assert np.isfinite(df[col]).all() and (df[col].abs() > 0).all()
    assert (df["measured_ms"] > 0).all() and (df["predicted_ms"] > 0).all()
    expect = (df["predicted_ms"] - df["measured_ms"]) / df["measured_ms"] * 100
    np.testing.assert_allclose(df["error_pct"], expect, rtol=1e-9)
    assert (df["measured_p10_ms"] <= df["measured_ms"]).all()
    assert (df["measured_ms"] <= df["measured_p90_ms"]).all()
    for cfg in configs:
        assert cfg.label in res.output
    assert "overall" in res.output and "median_abs_error_pct" in res.output
    # The machine "runs 25 % slower" than the profile: reported, and taken out of the diagnostic.
    np.testing.assert_allclose(df["machine_drift_pct"], 25.0)
    np.testing.assert_allclose(df["drift_adjusted_error_pct"],
                               (1.25 * df["predicted_ms"] - df["measured_ms"]) / df["measured_ms"] * 100, rtol=1e-9)
    assert "machine drift vs the profile" in res.output and "+25.0 %" in res.output
    assert "warning: the machine ran 25 % away" in res.output  # too far for absolute errors to mean much
    assert "threads, fp32)" in res.output and (df["dtype"] == "fp32").all()  # the report names threads and dtype

    # Rescoring keeps the measurements and predicts again: with the same profile, the same predictions.
    # An older report has no suite column (its suite is the one holding its labels), and a label no
    # suite has is left out with a note.
    old = df.drop(columns=["suite"])
    stray = old.iloc[[0]].assign(config="no such configuration")
    old = pd.concat([old, stray], ignore_index=True)
    old.to_csv(tmp_path / "old.csv", index=False)
    res = _run("rescore", str(tmp_path / "old.csv"), "--profile", synthetic_file, "--out", str(tmp_path / "re.csv"))
    assert res.exit_code == 0, res.output
    re = pd.read_csv(tmp_path / "re.csv").set_index("config")
    np.testing.assert_allclose(re.loc[df["config"], "predicted_ms"], df["predicted_ms"], rtol=1e-6)
    np.testing.assert_allclose(re.loc[df["config"], "measured_ms"], df["measured_ms"])
    assert "1 measured rows" in res.stderr and "tiny suite" in res.stderr


def test_small_drift_is_reported_without_a_warning():
    from pis.validate.drift import Drift
    from pis.validate.report import format_drift

    rep = pd.DataFrame({"status": ["ok"], "drift_adjusted_error_pct": [3.0]})
    calm = format_drift([Drift(4.0, 12, ()), Drift(-6.0, 12, ())], rep)
    assert "+4.0 %, -6.0 %" in calm and "warning" not in calm
    assert "warning" in format_drift([Drift(4.0, 12, ()), Drift(-30.0, 12, ())], rep)


def test_profile_without_probe_points_validates_without_drift(synthetic_file, tmp_path, monkeypatch):
    import pis.validate.drift as drift
    monkeypatch.setattr(drift, "PROBE_RANGE_US", (1e12, 2e12))  # no stored row is that slow
    out = tmp_path / "report.csv"
    res = _run("--device", "cpu", "--profile", synthetic_file, "--suite", "tiny", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "machine drift: not measured" in res.output
    df = pd.read_csv(out)
    assert df["machine_drift_pct"].isna().all() and (df["status"] == "ok").all()


def test_drift_probe_remeasures_profile_points_on_the_cpu():
    from pis.validate.drift import PROBE_OPS, PROBE_RANGE_US, measure_drift, probe_rows
    from pis.calibrate.grid import point
    from pis.calibrate.runner import measure_point
    from pis.calibrate.timing import make_timer, TimingConfig
    from pis.profiles.store import Profile

    timer = make_timer(CPU, TimingConfig(target_s=0.01, min_repeats=3, max_repeats=10))
    pts = [point("gemm", m=16, n=512, k=512), point("rmsnorm", numel=256 * 4096), point("gemm", m=1, n=8, k=8)]
    rows = pd.DataFrame([measure_point(p, "fp32", CPU, timer) for p in pts])
    prof = Profile(rows=rows, meta={"grid_name": "tiny", "dtype": "fp32", "device_kind": "cpu"})
    picked = probe_rows(prof, "fp32")
    assert {op for op, _, _ in picked} <= set(PROBE_OPS)
    lo, hi = PROBE_RANGE_US
    assert all(lo <= us <= hi for _, _, us in picked)  # the 8x8 GEMM is too short to probe
    drift = measure_drift(prof, CPU, "fp32")
    assert drift.points == len(picked) and np.isfinite(drift.median_pct) and -80 < drift.median_pct < 400


def test_rounds_report_the_median_of_interleaved_rounds(synthetic_file, tmp_path):
    out = tmp_path / "report.csv"
    res = _run("--device", "cpu", "--profile", synthetic_file, "--suite", "tiny", "--rounds", "2",
               "--no-drift", "--out", str(out))
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert (df["rounds"] == 2).all() and (df["round_spread_pct"] >= 0).all()
    assert "median of 2 rounds" in res.output


def test_combine_rounds_takes_medians_and_recomputes_errors():
    def report(measured, status=("ok", "ok"), drift=0.0):
        return pd.DataFrame(dict(config=["a", "b"], measured_ms=measured, measured_p10_ms=np.array(measured) * 0.9,
                                 measured_p90_ms=np.array(measured) * 1.1, repeats=[5, 5],
                                 predicted_ms=[10.0, 20.0], predicted_ops_ms=[8.0, 16.0],
                                 error_pct=[0.0, 0.0], ops_error_pct=[0.0, 0.0], status=list(status),
                                 rounds=[1, 1], round_spread_pct=[0.0, 0.0], machine_drift_pct=[drift, drift]))
    rounds = [report([10.0, 25.0], drift=10.0), report([12.0, 20.0], ("ok", "error: boom"), drift=20.0),
              report([8.0, 15.0], drift=0.0)]
    out = combine_rounds(rounds)
    a, b = out.iloc[0], out.iloc[1]
    assert a["measured_ms"] == 10.0 and a["rounds"] == 3 and a["repeats"] == 15
    assert a["round_spread_pct"] == pytest.approx(40.0)
    assert a["measured_p10_ms"] == pytest.approx(7.2) and a["measured_p90_ms"] == pytest.approx(13.2)
    assert a["error_pct"] == pytest.approx(0.0) and a["ops_error_pct"] == pytest.approx(-20.0)
    # The machine ran 10 % slower (median over the rounds): 10 ms predicted x 1.1 vs 10 measured.
    assert a["machine_drift_pct"] == pytest.approx(10.0) and a["drift_adjusted_error_pct"] == pytest.approx(10.0)
    # Not measured in every round: the first round's row, as it was.
    assert b["measured_ms"] == 25.0 and b["rounds"] == 1 and b["error_pct"] == 0.0
    assert combine_rounds([rounds[0]]).equals(rounds[0])


def test_refuses_to_overwrite(synthetic_file, tmp_path):
    out = tmp_path / "report.csv"
    out.write_text("precious")
    res = _run("--device", "cpu", "--profile", synthetic_file, "--suite", "tiny", "--out", str(out))
    assert res.exit_code == 2
    assert "--force" in res.output and out.read_text() == "precious"


@pytest.mark.parametrize("args, needle", [
    ([], "--profile"),
    (["--profile", "x.parquet", "--calibrate"], "not both"),
    (["--profile", "does-not-exist.parquet"], "does-not-exist"),
])
def test_bad_arguments_exit_2(args, needle):
    res = _run("--device", "cpu", "--suite", "tiny", *args)
    assert res.exit_code == 2 and needle in res.output
    assert "Traceback" not in res.output


def test_profile_of_another_device_kind_is_refused(make_synthetic, tmp_path):
    path = tmp_path / "gpu.parquet"
    write_profile(make_synthetic("cuda").profile, path)
    res = _run("--device", "cpu", "--profile", str(path), "--suite", "tiny")
    assert res.exit_code == 2 and "cuda" in res.output


def test_measure_calls_setup_before_every_repeat():
    calls = {"setup": 0, "step": 0}

    def setup():
        calls["setup"] += 1

    def step():
        assert calls["setup"] == calls["step"] + 1  # a fresh setup for every timed step
        calls["step"] += 1

    effort = TimingConfig(warmup=1, min_repeats=4, max_repeats=4, retries=0)
    med, p10, p90, n = measure_step(Step(step, setup), CPU, effort)
    assert n == 4 and calls["step"] == 5 and p10 <= med <= p90


def test_cpu_measure_evicts_the_cache_between_setup_and_step(monkeypatch):
    import pis.calibrate.timing as timing
    order = []
    monkeypatch.setattr(timing, "_cpu_flush", lambda: lambda: order.append("flush"))
    step = Step(lambda: order.append("step"), lambda: order.append("setup"))
    measure_step(step, CPU, TimingConfig(warmup=1, min_repeats=3, max_repeats=3, retries=0, flush_cache=True))
    assert order == ["setup", "flush", "step"] * 4
    order.clear()
    measure_step(step, CPU, TimingConfig(warmup=1, min_repeats=3, max_repeats=3, retries=0))
    assert "flush" not in order


def test_last_level_cache_size_from_sysfs(tmp_path):
    from pis.calibrate.timing import CpuCacheFlush, last_level_cache_bytes
    for i, (level, size) in enumerate([(1, "48K"), (2, "2048K"), (3, "491520K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    assert last_level_cache_bytes(root=str(tmp_path)) == 491520 * 2**10
    assert last_level_cache_bytes(default=123, root=str(tmp_path / "none")) == 123
    assert CpuCacheFlush(480 * 2**20).bytes == 720 * 2**20  # 1.5x ...
    assert CpuCacheFlush(2**30).bytes == 2**30  # ... at most 1 GiB
    flush = CpuCacheFlush(2**20)
    flush()
    flush()
    assert flush.bytes == 3 * 2**19 and float(flush._buf[0]) == 2.0


def test_summary_per_family_and_overall():
    rep = pd.DataFrame({"method": ["a", "a", "b", "b"], "phase": ["prefill"] * 4,
                        "error_pct": [10.0, -30.0, 5.0, np.nan],
                        "ops_error_pct": [-20.0, -40.0, 1.0, np.nan],
                        "status": ["ok", "ok", "ok", "skipped: x"]})
    s = summarize_report(rep).set_index("method")
    assert s.loc["a", "median_abs_error_pct"] == 20.0 and s.loc["a", "max_abs_error_pct"] == 30.0
    assert s.loc["a", "ops_median_abs_error_pct"] == 30.0 and s.loc["overall", "ops_max_abs_error_pct"] == 40.0
    assert s.loc["b", "n"] == 1 and s.loc["overall", "n"] == 3
    assert s.loc["overall", "max_abs_error_pct"] == 30.0


def test_speedups_pair_each_pruned_row_with_its_dense_counterpart():
    base = dict(model="m", layers=4, phase="decode", batch=1, seq_len=1, context_len=512, status="ok")
    rep = pd.DataFrame([
        dict(base, backend="hf", method="dense", measured_ms=10.0, predicted_ms=12.0),
        dict(base, backend="hf", method="static-depth", measured_ms=5.0, predicted_ms=6.6),
        dict(base, backend="reference", method="dense", measured_ms=8.0, predicted_ms=8.0),
        dict(base, backend="reference", method="dynamic-depth", measured_ms=4.0, predicted_ms=5.0),
        dict(base, backend="hf", method="low-rank", batch=2, measured_ms=4.0, predicted_ms=4.0),  # no dense at B=2
        dict(base, backend="hf", method="static-width", measured_ms=np.nan, predicted_ms=6.0, status="error: x"),
    ])
    rep["error_pct"] = rep["ops_error_pct"] = 100 * (rep["predicted_ms"] / rep["measured_ms"] - 1)
    out = with_speedups(rep)
    # 12 / 6.6 predicted vs 10 / 5 measured; the reference executor pairs with its own dense
    assert out.loc[1, "measured_speedup"] == 2.0
    assert out.loc[1, "speedup_error_pct"] == pytest.approx(100 * ((12 / 6.6) / 2.0 - 1))
    assert out.loc[3, "predicted_speedup"] == 1.6 and out.loc[3, "speedup_error_pct"] == pytest.approx(-20.0)
    assert out.loc[[0, 2, 4, 5], "speedup_error_pct"].isna().all()
    s = summarize_report(out).set_index("method")
    assert s.loc["overall", "speedup_max_abs_error_pct"] == pytest.approx(20.0)
    assert np.isnan(s.loc["dense", "speedup_median_abs_error_pct"])
    # The printed table shows measured/predicted speedup and its error where there is one.
    from pis.validate.report import format_table
    table = format_table(out.assign(config=[f"c{i}" for i in range(len(out))], extrapolated=False,
                                    in_model_factor=1.0)).splitlines()
    assert "2.00/1.82" in table[3] and "-9.1" in table[3]
    assert "1.60" not in table[2] and "/" not in table[2]  # dense: no speedup of its own


def test_combined_report_keeps_each_rounds_median():
    base = dict(model="m", layers=4, backend="hf", phase="decode", batch=1, seq_len=1, context_len=512)
    rounds = [pd.DataFrame([dict(base, config="d", method="dense", measured_ms=d, predicted_ms=10.0),
                            dict(base, config="p", method="static-depth", measured_ms=p, predicted_ms=5.0)])
              .assign(measured_p10_ms=1.0, measured_p90_ms=1.0, repeats=5, status="ok", predicted_ops_ms=1.0,
                      machine_drift_pct=0.0)
              for d, p in [(10.0, 5.0), (20.0, 10.0), (10.0, 6.0)]]
    out = with_speedups(combine_rounds(rounds))
    assert out.loc[0, "round_measured_ms"] == "10;20;10" and out.loc[1, "round_measured_ms"] == "5;10;6"
    assert out.loc[1, "measured_speedup"] == pytest.approx(10.0 / 6.0)  # the medians' ratio


# --- the real models ---------------------------------------------------------------------------

def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def test_reference_executor_keeps_the_predicted_cache_discipline():
    """The reference decoder is predicted with --kv-cache preallocated, so it writes in place."""
    from pis.pruned import PruneOptions
    cfg = next(c for c in suite_configs("full", "cpu") if c.reference and c.phase == "decode")
    assert cfg.options().kv_cache == "preallocated"
    for kv, extra in (("preallocated", 1), ("concat", 0)):
        m = build_model(SPEC, "dense", 0.0, CPU, torch.float32, PruneOptions(kv_cache=kv), reference_dense=True)
        k, _ = m.model.make_caches(2, 16)[0]
        assert k.shape[2] == 16 + extra, kv


@pytest.mark.parametrize("method", ["dense", "dynamic-depth", "sparse-attention", "dynamic-width"])
def test_every_reference_family_decodes_as_the_suite_builds_it(method):
    """Built with the options the suite predicts them with (in-place caches), every family steps."""
    cfg = next(c for c in suite_configs("full", "cpu") if c.backend == "reference" and c.phase == "decode"
               and c.method == method)
    m = build_model(SPEC, method, cfg.sparsity, CPU, torch.float32, cfg.options(), reference_dense=cfg.reference)
    r = m.step("decode", 2, 1, 40)
    with torch.inference_mode():
        r.setup()
        assert tuple(_logits(r.run()).shape) == (2, 1, SPEC.vocab)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_reference_dense_matches_hf_shapes(phase):
    hf = build_model(SPEC, "dense", 0.0, CPU, torch.float32)
    ref = build_model(SPEC, "dense", 0.0, CPU, torch.float32, reference_dense=True)
    # Same parameters: the same op list over the same weight shapes.
    n_hf = sum(p.numel() for p in hf.model.parameters())
    n_ref = sum(p.numel() for p in ref.model.parameters())
    assert n_hf == n_ref == SPEC.params()
    shapes = []
    with torch.inference_mode():
        for m in (hf, ref):
            r = m.step(phase, 3, 40, 70)
            if r.setup:
                r.setup()
            shapes.append(tuple(_logits(r.run()).shape))
    assert shapes[0] == shapes[1] == (3, 1, SPEC.vocab)


def test_static_models_use_the_simulator_dimensions():
    s, o = 0.5, PruneOptions(align=32)
    w = build_model(SPEC, "static-width", s, CPU, torch.float32, o)
    attn = w.model.model.layers[0].self_attn
    assert attn.q_proj.out_features == int(pruned_heads(SPEC, s)) * SPEC.head_dim
    assert attn.k_proj.out_features == SPEC.kv_heads * SPEC.head_dim
    assert w.model.model.layers[0].mlp.gate_proj.out_features == int(pruned_ffn(SPEC, s, 32))
    d = build_model(SPEC, "static-depth", s, CPU, torch.float32, o)
    assert len(d.model.model.layers) == int(layers_kept(SPEC, s))
    sub = build_model(SPEC, "static-depth", 0.25, CPU, torch.float32, PruneOptions(granularity="sublayer"))
    layers = list(sub.model.model.layers)
    assert sum(isinstance(x, PrunedLayer) and x.skip_attn for x in layers) == 1  # round(0.25·4) = 1
    assert not any(isinstance(x, PrunedLayer) and x.skip_mlp for x in layers)
    lr = build_model(SPEC, "low-rank", s, CPU, torch.float32, o)
    q = lr.model.model.layers[0].self_attn.q_proj
    assert q[0].out_features == int(lowrank_rank(SPEC.q_width, SPEC.hidden, s, 32))


def test_semi_structured_is_skipped_on_cpu():
    with pytest.raises(Unsupported):
        build_model(SPEC, "semi-structured", 0.25, CPU, torch.float32)


# --- routed families really compute on kept tokens only ---------------------------------------

def _count_rows(module: torch.nn.Module, seen: list[int]):
    return module.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].reshape(-1, inp[0].shape[-1]).shape[0]))


def _ref(method: str, s: float):
    torch.manual_seed(0)
    return rd.RefDecoder(SPEC, method, s).eval()


@pytest.mark.parametrize("phase, batch, n, kept_rows", [
    ("prefill", 2, 48, 2 * 24),   # ceil(0.5·48) tokens per sequence
    ("decode", 5, 100, 3),        # ceil(0.5·5) of the batch
])
def test_dynamic_depth_runs_sublayers_on_kept_tokens(phase, batch, n, kept_rows):
    dec = _ref("dynamic-depth", 0.5)
    q_rows, mlp_rows, router_rows = [], [], []
    layer = dec.layers[0]
    hooks = [_count_rows(layer.q_proj, q_rows), _count_rows(layer.gate_proj, mlp_rows),
             _count_rows(layer.attn_router, router_rows)]
    with torch.inference_mode():
        if phase == "prefill":
            dec.prefill(torch.randint(0, SPEC.vocab, (batch, n)))
        else:
            dec.decode(torch.randint(0, SPEC.vocab, (batch, 1)), dec.make_caches(batch, n), n)
    for h in hooks:
        h.remove()
    tokens = batch * (n if phase == "prefill" else 1)
    assert router_rows == [tokens]                   # the router sees every token
    assert q_rows == [kept_rows] and mlp_rows == [kept_rows]


def test_dynamic_width_groups_see_their_share_of_tokens():
    dec = _ref("dynamic-width", 0.75)
    layer = dec.layers[0]
    q_rows, ffn_rows, k_rows = [], [], []
    hooks = [_count_rows(m, q_rows) for m in layer.q_groups]
    hooks += [_count_rows(m, ffn_rows) for m in layer.gate_groups]
    hooks.append(_count_rows(layer.k_proj, k_rows))
    with torch.inference_mode():
        dec.prefill(torch.randint(0, SPEC.vocab, (2, 40)))
    for h in hooks:
        h.remove()
    assert k_rows == [80]                            # K/V stay dense
    assert q_rows == [2 * 10] * SPEC.kv_heads        # ceil(0.25·40) per sequence, per head group
    assert ffn_rows == [2 * 10] * dec.opts.ffn_groups


def test_sparse_attention_decode_attends_kept_blocks_only(monkeypatch):
    seen = []
    real = rd._sdpa

    def spy(q, k, v, causal, mask=None):
        seen.append(k.shape[2])
        return real(q, k, v, causal, mask)

    monkeypatch.setattr(rd, "_sdpa", spy)
    dec = _ref("sparse-attention", 0.75)
    context = 1000                                   # 1001 keys = 16 blocks of 64
    with torch.inference_mode():
        dec.decode(torch.randint(0, SPEC.vocab, (2, 1)), dec.make_caches(2, context), context)
    assert seen == [math.ceil(0.25 * 16) * 64] * SPEC.layers


def test_gather_blocks_matches_advanced_indexing():
    b, g, nb, blk, d, kept = 2, 3, 7, 4, 5, 3
    cache = torch.randn(b, g, nb * blk, d)
    idx = torch.stack([torch.randperm(nb)[:kept] for _ in range(b * g)]).view(b, g, kept)
    bi, gi = torch.arange(b)[:, None, None], torch.arange(g)[None, :, None]
    want = cache.view(b, g, nb, blk, d)[bi, gi, idx].reshape(b, g, kept * blk, d)
    torch.testing.assert_close(rd.gather_blocks(cache, idx, blk), want, rtol=0, atol=0)


def test_sparse_attention_prefill_visits_a_fraction_of_blocks(monkeypatch):
    keys = []
    real = rd._sdpa

    def spy(q, k, v, causal, mask=None):
        keys.append(k.shape[2] // 64)
        return real(q, k, v, causal, mask)

    monkeypatch.setattr(rd, "_sdpa", spy)
    dec = _ref("sparse-attention", 0.5)
    dec.layers = dec.layers[:1]
    with torch.inference_mode():
        dec.prefill(torch.randint(0, SPEC.vocab, (1, 8 * 64)))
    assert keys == [math.ceil(0.5 * (i + 1)) for i in range(8)]
    assert sum(keys) < 8 * 9 / 2


# --- GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_suite_on_cuda(make_synthetic, tmp_path):
    path = tmp_path / "gpu.parquet"
    write_profile(make_synthetic("cuda").profile, path)
    out = tmp_path / "report.csv"
    res = _run("--device", "cuda:0", "--profile", str(path), "--suite", "tiny", "--out", str(out))
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert (df["status"] == "ok").all() and np.isfinite(df["measured_ms"]).all()
    assert (df["dtype"] == "bf16").all()


def test_drift_probe_leaves_out_rows_that_allocate_past_the_mmap_threshold():
    from pis.validate.drift import probe_rows
    from pis.profiles.store import Profile

    def row(op, us, **shape):
        return dict(op=op, dtype="fp32", status="ok", median_us=us, **shape)

    rows = pd.DataFrame([row("rmsnorm", 80.0, numel=1 << 18), row("rmsnorm", 4000.0, numel=1 << 23),
                         row("gemm", 60.0, m=16, n=256, k=512), row("gemm", 4900.0, m=4096, n=2048, k=64)])
    picked = probe_rows(Profile(rows=rows, meta={"grid_name": "tiny"}), "fp32")
    # 2^23 fp32 elements and a 4096 x 2048 fp32 output are 32 MiB each: a fresh mapping.
    assert sorted((op, us) for op, _, us in picked) == [("gemm", 60.0), ("rmsnorm", 80.0)]


def test_cpu_timer_warms_the_allocator_so_young_processes_time_like_old_ones():
    # In a young process glibc maps each block over 128 KiB afresh and trims its heap after every
    # free, so a 1 MiB RMSNorm faulted in ~78k pages and timed 7x slower than in a process that
    # has run a model. Page faults of one calibration point, fresh subprocess each, counted by getrusage.
    import subprocess
    import sys

    code = """
import resource, sys, torch
import pis.calibrate.timing as T
if sys.argv[1] == "cold":
    T.warm_allocator = lambda: None
from pis.calibrate.grid import point, timing_config
from pis.calibrate.runner import measure_point
timer = T.make_timer(torch.device("cpu"), timing_config("default", "cpu"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
measure_point(point("rmsnorm", numel=1 << 18), "fp32", torch.device("cpu"), timer)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("cold", "warm")}
    assert faults["warm"] < faults["cold"] / 5, faults


def test_graph_execution_on_a_cpu_is_one_line_exit_2(synthetic_file):
    r = _run("--device", "cpu", "--profile", synthetic_file, "--execution", "graph")
    assert r.exit_code == 2 and "needs --device cuda" in r.output and "Traceback" not in r.output


def test_graph_suites_cover_every_family_at_the_studys_lengths():
    from pis.simulator.pruning import FAMILIES
    from pis.validate.suites import suite_configs

    cfgs = suite_configs("full", "cuda", "graph")
    assert len(cfgs) >= 30 and all(c.execution == "graph" for c in cfgs)
    assert {c.method for c in cfgs} == set(FAMILIES)
    assert {c.batch for c in cfgs} == {1, 8, 32}
    assert {c.seq_len for c in cfgs if c.phase == "prefill"} == {1024}
    assert {c.context for c in cfgs if c.phase == "decode"} == {4096, 32768}
    assert len({c.label for c in cfgs}) == len(cfgs)
    with pytest.raises(Exception, match="CUDA"):
        suite_configs("full", "cpu", "graph")


def test_hugging_face_static_cache_step_keeps_every_logit_and_writes_one_slot():
    model = build_model(SPEC, "dense", 0.0, CPU, torch.float32)
    with torch.inference_mode():
        assert model.static_step("prefill", 2, 16, 0).run().logits.shape == (2, 16, SPEC.vocab)
        step = model.static_step("decode", 2, 1, 20)
        assert step.run().logits.shape == (2, 1, SPEC.vocab)
    with pytest.raises(Unsupported, match="CUDA"):
        model.graph_step("decode", 2, 1, 20)


def test_kv_group_width_runs_fewer_kv_heads_natively():
    opts = PruneOptions(op_graph="study")
    model = build_model(SPEC, "static-width", 0.5, CPU, torch.float32, opts)
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    kv = model.kv_tensors(2, 8)[0][0]
    assert kv.shape[1] == 1  # the cache shrinks with the groups
