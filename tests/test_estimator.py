"""The latency estimator against the synthetic profile's analytic truth (tests/conftest.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pis.errors import MissingOpError, PisError
from pis.simulator.estimator import EXACT, INTERP, ROOFLINE, SOURCE_NAMES, Estimator, loo_summary
from pis.simulator.interp import LogInterpolator

from conftest import DISPATCH_US, PEAK_BANDWIDTH, PEAK_FLOPS


@pytest.fixture(scope="module")
def est(synthetic):
    return Estimator(synthetic.profile)


def _one(pred):
    return float(np.asarray(pred.time_us).reshape(-1)[0]), int(np.asarray(pred.source).reshape(-1)[0]), \
        bool(np.asarray(pred.extrapolated).reshape(-1)[0])


def test_exact_hit_returns_the_measured_value(est, synthetic):
    rows = synthetic.profile.ok_rows
    row = rows[(rows["op"] == "gemm") & (rows["m"] == 64) & (rows["n"] == 4096) & (rows["k"] == 1024)].iloc[0]
    t, src, ext = _one(est.predict("gemm", {"m": 64, "n": 4096, "k": 1024}))
    assert src == EXACT and not ext
    assert t == row["median_us"]


@pytest.mark.parametrize("op,shape", [
    ("gemm", dict(m=48, n=3000, k=1500)),
    ("gemm", dict(m=700, n=5000, k=11000)),
    ("gemm", dict(m=4096, n=6000, k=700)),          # on the hull boundary (largest M)
    ("attn_decode", dict(batch=8, q_len=1, kv_len=3000, heads=16, kv_heads=4, head_dim=128, causal=0)),
    ("attn_prefill", dict(batch=2, q_len=1000, kv_len=1000, heads=16, kv_heads=8, head_dim=64, causal=1)),
    ("rmsnorm", dict(numel=3_000_000)),
])
def test_interior_points_interpolate_close_to_truth(est, synthetic, op, shape):
    t, src, ext = _one(est.predict(op, shape))
    assert src == INTERP and not ext
    truth = float(synthetic.truth(op, shape))
    # the synthetic grid steps 2x per dimension, 4x in decode batch, heads and kv_heads
    assert abs(t / truth - 1) < (0.10 if op == "attn_decode" else 0.05)


def test_prefill_grid_is_flat_yet_interpolates(est):
    """Prefill rows all have q_len == kv_len (a degenerate point set for Qhull)."""
    interp = est._model("attn_prefill").parts[(64, 1, 1)].interp  # head_dim 64, causal, grouped-query
    assert interp.rank == 3 and interp.tri is not None  # 5 features: kv_heads constant, q == kv folded


def test_off_subspace_attention_query_is_roofline(est, synthetic):
    shape = dict(batch=2, q_len=500, kv_len=2000, heads=16, kv_heads=8, head_dim=64, causal=1)
    t, src, ext = _one(est.predict("attn_prefill", shape))
    assert src == ROOFLINE and ext and t > 0


def test_far_outside_is_roofline_and_extrapolated(est, synthetic):
    shape = dict(m=1_000_000, n=4096, k=4096)
    t, src, ext = _one(est.predict("gemm", shape))
    assert src == ROOFLINE and ext
    assert t >= float(est.speed_of_light_us("gemm", shape))
    assert abs(t / float(synthetic.truth("gemm", shape)) - 1) < 0.10  # utilization saturates


def test_memory_op_outside_range_is_flagged(est):
    for numel in (10, 10**10):
        _, src, ext = _one(est.predict("add", {"numel": numel}))
        assert src == ROOFLINE and ext


def test_missing_op_raises_unless_roofline_allowed(synthetic):
    with pytest.raises(MissingOpError, match="gemm_2to4.*--allow-roofline"):
        Estimator(synthetic.profile).predict("gemm_2to4", {"m": 8, "n": 4096, "k": 4096})
    est = Estimator(synthetic.profile, allow_roofline=True)
    shape = {"m": np.array([8, 512]), "n": 4096, "k": 4096}
    pred = est.predict("gemm_2to4", shape)
    assert (pred.source == ROOFLINE).all() and pred.extrapolated.all()
    # The fallback is the roofline at one utilization, whatever the shape: a memory-bound and a
    # compute-bound shape sit the same distance above their speed of light.
    ratio = pred.time_us / est.speed_of_light_us("gemm_2to4", shape)
    assert ratio[0] == pytest.approx(ratio[1], rel=1e-12)
    # No synthetic GEMM runs above 90 % of either peak (the analytic model's efficiencies): the
    # utilization learned from them leaves the fallback at least 1/0.9 over the speed of light.
    assert ratio[0] >= 1 / 0.9
    assert 0 < est.default_utilization <= 1


def test_unknown_op_is_a_user_error(est):
    with pytest.raises(PisError, match="unknown op"):
        est.predict("conv2d", {})


def test_vectorized_equals_one_by_one(est):
    rng = np.random.default_rng(7)
    n = 300
    m = rng.choice([1, 3, 64, 100, 4096, 9000], n)
    nn = rng.choice([256, 1000, 4096, 4032, 20000], n)
    k = rng.choice([128, 4096, 5000], n)
    batch = est.predict("gemm", {"m": m, "n": nn, "k": k})
    assert set(np.unique(batch.source)) == {EXACT, INTERP, ROOFLINE}
    for i in range(0, n, 7):
        one = est.predict("gemm", {"m": int(m[i]), "n": int(nn[i]), "k": int(k[i])})
        assert one.time_us.shape == ()
        assert float(one.time_us) == pytest.approx(batch.time_us[i], rel=1e-12)
        assert (int(one.source), bool(one.extrapolated)) == (batch.source[i], batch.extrapolated[i])


def test_broadcasting_and_empty_shapes(est):
    pred = est.predict("gemm", {"m": np.arange(1, 7).reshape(2, 3), "n": 4096, "k": 4096})
    assert pred.time_us.shape == (2, 3)
    assert est.predict("gemm", {"m": np.array([], dtype=int), "n": 1, "k": 1}).time_us.shape == (0,)
    overhead = est.predict("overhead", {})
    assert float(overhead.time_us) == DISPATCH_US and int(overhead.source) == EXACT


def test_speed_of_light_uses_metadata_peaks(est, synthetic):
    shape = {"m": np.array([1, 4096]), "n": 4096, "k": 4096}
    sol = est.speed_of_light_us("gemm", shape)
    # Counted by hand (bf16, 2 bytes): one row streams the 4096 x 4096 weights plus its input and
    # output row, at the metadata's bandwidth; 4096 rows do 2 x 4096^3 FLOPs at its FLOP/s.
    one_row = 2 * (4096 * 4096 + 4096 + 4096) / PEAK_BANDWIDTH * 1e6
    full = 2 * 4096 ** 3 / PEAK_FLOPS * 1e6
    np.testing.assert_allclose(sol, [one_row, full], rtol=1e-12)
    assert est.peak_source["peak_flops"].startswith("metadata")
    # A lower bound on the analytic truth at every measured GEMM shape (efficiencies are <= 1).
    rows = synthetic.profile.ok_rows
    rows = rows[rows["op"] == "gemm"]
    grid = {c: rows[c].to_numpy() for c in ("m", "n", "k")}
    assert (est.speed_of_light_us("gemm", grid) <= synthetic.truth("gemm", grid) - DISPATCH_US).all()


def test_peaks_derived_from_profile_without_metadata(make_synthetic):
    est = Estimator(make_synthetic(with_peaks=False).profile)
    assert est.peak_source["peak_flops"].startswith("profile")
    # achieved rates never exceed the model's peaks, and the best GEMM gets most of the way
    assert 0.5 * PEAK_FLOPS < est.peak_flops <= PEAK_FLOPS
    assert 0.5 * PEAK_BANDWIDTH < est.peak_bandwidth <= PEAK_BANDWIDTH


def test_launch_floor_on_cuda_only(make_synthetic, est):
    cuda = Estimator(make_synthetic(device_kind="cuda").profile)
    assert cuda.launch_floor and not est.launch_floor
    tiny = {"numel": 1024}
    pred = cuda.predict("add", tiny)
    assert float(pred.kernel_us) < DISPATCH_US and float(pred.time_us) == DISPATCH_US == cuda.launch_us_per_op
    cpu = est.predict("add", tiny)
    assert float(cpu.time_us) == float(cpu.kernel_us)


def _scaled(profile, factor: float, grouped: bool):
    """``profile`` with its grouped-query (or its other) attention rows ``factor`` times slower."""
    rows = profile.rows.copy()
    sel = rows["op"].isin(["attn_decode", "attn_prefill"]) & ((rows["heads"] > rows["kv_heads"]) == grouped)
    rows.loc[sel, ["median_us", "p10_us", "p90_us"]] *= factor
    return type(profile)(rows=rows, meta=profile.meta)


GQA_QUERIES = dict(batch=[1, 8, 8, 32], q_len=1, kv_len=[100, 3000, 3000, 20000], heads=[8, 12, 16, 24],
                   kv_heads=[4, 8, 4, 8], head_dim=128, causal=0)
MHA_QUERIES = dict(GQA_QUERIES, heads=[16, 16, 16, 16], kv_heads=[16, 16, 16, 16])


def test_cpu_attention_interpolates_within_its_grouped_query_regime(make_synthetic):
    # On a CPU, grouped-query shapes are priced from grouped-query rows alone, and the rest from
    # the rest: making the MHA rows 10x slower moves no GQA prediction (8/4 lay between MHA 8/8
    # and GQA 8/2, so one partition mixed them), and the other way round.
    prof = make_synthetic().profile
    gqa = Estimator(prof).op_time("attn_decode", GQA_QUERIES)
    mha = Estimator(prof).op_time("attn_decode", MHA_QUERIES)
    assert np.array_equal(Estimator(_scaled(prof, 10.0, grouped=False)).op_time("attn_decode", GQA_QUERIES), gqa)
    assert np.array_equal(Estimator(_scaled(prof, 10.0, grouped=True)).op_time("attn_decode", MHA_QUERIES), mha)
    one = Estimator(prof, split_gqa=False)
    assert not np.allclose(Estimator(_scaled(prof, 10.0, grouped=False), split_gqa=False)
                           .op_time("attn_decode", GQA_QUERIES), one.op_time("attn_decode", GQA_QUERIES))
    # A regime the profile never measured borrows the other one's rows, flagged as extrapolated.
    rows = prof.rows
    gqa_only = type(prof)(rows=rows[~(rows["heads"] == rows["kv_heads"])], meta=prof.meta)
    pred = Estimator(gqa_only).predict("attn_decode", MHA_QUERIES)
    assert (pred.source == ROOFLINE).all() and pred.extrapolated.all() and (pred.time_us > 0).all()


def test_leave_out_keeps_the_grouped_query_split(make_synthetic):
    # The held-out models of loo_errors price as the estimator does: holding out 32 query heads
    # leaves GQA 8/2 and MHA 8/8, and the GQA rows' predictions must not move with the MHA rows.
    prof = make_synthetic().profile

    def gqa_predictions(profile) -> np.ndarray:
        df = Estimator(profile).loo_errors("attn_decode", by="heads")
        return df.loc[df["heads"] > df["kv_heads"], "predicted_us"].to_numpy()

    assert np.array_equal(gqa_predictions(_scaled(prof, 10.0, grouped=False)), gqa_predictions(prof))


def test_cuda_attention_interpolates_across_the_grouped_query_boundary(make_synthetic):
    # CUDA kernels read shared K/V heads natively: one partition per head_dim and causal, as before,
    # so the MHA rows inform grouped-query predictions there.
    prof = make_synthetic(device_kind="cuda").profile
    est = Estimator(prof)
    assert not est.split_gqa and set(est._model("attn_decode").parts) == {(64, 0), (128, 0)}
    assert not np.allclose(Estimator(_scaled(prof, 10.0, grouped=False)).op_time("attn_decode", GQA_QUERIES),
                           est.op_time("attn_decode", GQA_QUERIES))


def test_tile_alignment_option(make_synthetic):
    syn = make_synthetic(tile=128)  # truth pays for N rounded up to 128
    shape = {"m": 256, "n": 2112, "k": 1000}
    truth = float(syn.truth("gemm", shape))
    on = Estimator(syn.profile, tile_align="align")
    off = Estimator(syn.profile, tile_align="none")
    assert on.alignment("gemm") == {"n": 128, "k": 128}
    err_on = abs(float(on.op_time("gemm", shape)) / truth - 1)
    err_off = abs(float(off.op_time("gemm", shape)) / truth - 1)
    assert err_on < 0.01 < err_off
    assert Estimator(syn.profile).tile_align is False  # auto: CPU profile
    assert Estimator(make_synthetic(device_kind="cuda").profile).tile_align is True


def test_loo_on_synthetic_profile_is_small(est):
    df = est.loo_errors("gemm")
    s = df.attrs["summary"]
    assert s == loo_summary(df)
    assert s["n"] == 637 and set(df["source"].unique()) <= set(SOURCE_NAMES[1:])
    assert s["median_abs_pct"] < 2.0 and s["p90_abs_pct"] < 6.0
    # the 8 corners of the grid cannot be enclosed by the other points
    corners = df[df["m"].isin([1, 4096]) & df["n"].isin([256, 16384]) & df["k"].isin([256, 16384])]
    assert (corners["source"] == "roofline").all() and corners["extrapolated"].all()


def test_leave_one_out_equals_rebuilding_without_the_point():
    """The fast LOO path (re-triangulating a point's neighbours) equals dropping the point."""
    rng = np.random.default_rng(1)
    feats = rng.uniform(0, 5, (150, 3))  # scattered: a unique Delaunay triangulation
    values = np.sin(feats).sum(axis=1)
    loo, inside = LogInterpolator(feats, values).leave_one_out()
    assert 0 < (~inside).sum() < 60  # points on the hull go to the neighbours
    for i in range(0, 150, 5):
        rest = np.delete(np.arange(150), i)
        y, ins = LogInterpolator(feats[rest], values[rest])(feats[i:i + 1])
        assert (bool(ins[0]), y[0]) == (bool(inside[i]), pytest.approx(loo[i], rel=1e-9, abs=1e-12))


def test_loo_by_column_and_other_ops(est):
    df = est.loo_errors("gemm", by="n")
    assert len(df) == 637 and df.attrs["summary"]["n_roofline"] >= 2 * 13 * 7  # n=256 and n=16384 edges
    assert est.loo_errors("attn_decode").attrs["summary"]["n"] == 2 * 4 * 9 * 2 * 2
    with pytest.raises(PisError):
        est.loo_errors("gemm", by="numel")
    with pytest.raises(PisError, match="'numel'"):
        est.loo_errors("attn_decode", by="heads,numel")
    with pytest.raises(MissingOpError):
        est.loo_errors("gemm_2to4")


def test_loo_by_several_columns_holds_out_each_combination(synthetic):
    # Each (heads, kv_heads, head_dim) pair predicted from the others equals an estimator built
    # without that pair (the synthetic profile's peaks are in its metadata, so SOL is the same).
    est = Estimator(synthetic.profile)
    df = est.loo_errors("attn_decode", by="heads,kv_heads,head_dim")
    rows = synthetic.profile.rows
    pair = (rows["op"] == "attn_decode") & (rows["heads"] == 8) & (rows["kv_heads"] == 2) & (rows["head_dim"] == 64)
    held = rows[pair]
    without = Estimator(type(synthetic.profile)(rows=rows[~pair], meta=synthetic.profile.meta))
    cols = ["batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal"]
    expect = without.predict("attn_decode", {c: held[c].to_numpy() for c in cols}).kernel_us
    got = df.set_index(cols).loc[[tuple(r) for r in held[cols].to_numpy()], "predicted_us"].to_numpy()
    assert len(got) == len(held) and np.allclose(got, expect, rtol=1e-12)


def test_estimator_pickles_after_use(est):
    shape = {"m": np.array([5, 77]), "n": 3000, "k": 3000}
    before = est.predict("gemm", shape).time_us
    clone = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(clone.predict("gemm", shape).time_us, before)


def test_many_shapes_at_once_equal_a_few_at_a_time(est):
    """A sweep's many unique shapes (scipy's walk) and a one-point query's few (the numpy search
    over the mesh) get the same answer. Its speed is benchmarks/tools/sweep_speed.py's figure."""
    rng = np.random.default_rng(0)
    n = 20_000
    shape = {"m": rng.integers(1, 5000, n), "n": rng.integers(200, 16000, n), "k": rng.integers(200, 16000, n)}
    many = est.predict("gemm", shape)
    for i in rng.integers(0, n, 40):
        one = est.predict("gemm", {c: v[i] for c, v in shape.items()})
        assert one.source == many.source[i] and one.extrapolated == many.extrapolated[i]
        np.testing.assert_allclose(one.time_us, many.time_us[i], rtol=1e-12)


def test_kv_concat_is_priced_as_a_gather_on_profiles_without_it(synthetic):
    """The synthetic profile predates kv_concat: the documented stand-in answers it."""
    est = Estimator(synthetic.profile)
    shape = {"numel": np.array([4096, 1 << 20])}
    np.testing.assert_array_equal(est.predict("kv_concat", shape).time_us,
                                  est.predict("gather", shape).time_us)
