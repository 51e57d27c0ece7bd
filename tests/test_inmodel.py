"""The in-model correction: measured whole decoders against their predicted op sums."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pis.profiles.schema import SHAPE_COLUMNS_SINCE_V2, op_bytes, op_flops
from pis.profiles.store import Profile, normalize_rows, read_profile, write_profile
from pis.models import ModelSpec
from pis.simulator.api import Simulator
from pis.simulator.inmodel.rows import decoder_sums
from pis.simulator.opsum import OpSums
from pis.simulator.sweep import sweep

def decoder_op_sum(sim: Simulator, spec: ModelSpec, phase: str, batch: int, length: int, kv_cache: str = "concat",
                   method: str = "dense", sparsity: float = 0.0) -> tuple[float, float, float]:
    """(op sum µs, dispatches, loop-glue dispatches) of one whole decoder without its LM head."""
    sums = decoder_sums(sim.estimator, spec, phase, np.array([batch]), np.array([length]), kv_cache, method, sparsity)
    return float(sums.op_sum_us[0]), float(sums.dispatches[0]), float(sums.glue_dispatches[0])


SPEC = ModelSpec("ctx-test", hidden=1024, ffn=2816, layers=4, heads=16, kv_heads=4, head_dim=64, vocab=8192)
DIMS = dict(hidden=1024, ffn=2816, heads=16, kv_heads=4, head_dim=64, layers=2)


def prefill_law(tokens):
    return 1.1 * (np.asarray(tokens, dtype=float) / 96.0) ** 0.05


def decode_law(batch, context):
    return 1.2 * np.asarray(batch, dtype=float) ** 0.03 * (np.asarray(context, dtype=float) / 128.0) ** 0.05


# Factors planted in the rows follow an exact log-linear law, which the fit must recover.
PREFILL = {t: float(prefill_law(t)) for t in (96, 384, 1536)}  # tokens (batch 1)
DECODE = {(b, c): float(decode_law(b, c)) for b in (1, 4) for c in (128, 1024)}


def _with_decoders(synthetic, decode: dict | None = None) -> Profile:
    """The synthetic profile plus dense_decoder rows whose measured time is factor x op sum."""
    decode = DECODE if decode is None else decode
    est = Simulator(synthetic.profile)
    spec = ModelSpec("d", vocab=1, **DIMS)
    rows = []
    for tokens, f in PREFILL.items():
        t = f * decoder_op_sum(est, spec, "prefill", 1, tokens)[0]
        rows.append(dict(batch=1, q_len=tokens, kv_len=tokens, causal=1, median_us=t))
    for (b, c), f in decode.items():
        t = f * decoder_op_sum(est, spec, "decode", b, c)[0]
        rows.append(dict(batch=b, q_len=1, kv_len=c, causal=0, median_us=t))
    return _add_decoder_rows(synthetic.profile, "dense_decoder", rows)


def _add_decoder_rows(base: Profile, op: str, rows: list[dict]) -> Profile:
    """``base`` plus whole-decoder rows of ``op`` (shape and median_us given; the rest filled in)."""
    df = pd.DataFrame(rows).assign(op=op, dtype="bf16", repeats=10, status="ok", backend="test")
    for k, v in DIMS.items():  # rows may give their own dimensions
        df[k] = df[k].fillna(v) if k in df else v
    df["p10_us"], df["p90_us"] = df["median_us"] * 0.98, df["median_us"] * 1.02
    shape = {c: df[c].to_numpy() for c in ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim",
                                          "causal", "hidden", "ffn", "layers")}
    df["flops"], df["bytes"] = op_flops(op, shape), op_bytes(op, shape, "bf16")
    return Profile(rows=normalize_rows(pd.concat([base.rows, df], ignore_index=True)), meta=dict(base.meta))


@pytest.fixture(scope="module")
def ctx_est(synthetic) -> Simulator:
    return Simulator(_with_decoders(synthetic))


def _run(est, phase, batches, seqs, ctxs, in_model=True, methods=("dense",), sparsities=(0.0,)):
    return sweep(est, [SPEC], list(methods), list(sparsities), [phase], batches, seqs, ctxs,
                 in_model=in_model)


def _sums(op_sum_us: float, dispatches: float, n: int = 3) -> OpSums:
    """Op sums of ``n`` design points with no GEMMs, no LM head, no glue and no fresh allocations."""
    zeros = np.zeros(n)
    return OpSums(np.full(n, op_sum_us), zeros, zeros, zeros, np.zeros(n, dtype=bool), np.zeros((3, n)),
                  dispatches=np.full(n, dispatches), glue_dispatches=zeros, outside_us=zeros, fresh_bytes=zeros)


def _head_ms(est, df, spec=SPEC) -> np.ndarray:
    """The LM head's op time (ms) at each row of a sweep (one token per sequence)."""
    return np.array([float(est.estimator.predict("gemm", {"m": b, "n": spec.vocab, "k": spec.hidden}).time_us) / 1e3
                     for b in df["batch"]])


def _factors(est, df, spec=SPEC) -> np.ndarray:
    """The in-context factor each row's layers got: (latency − head) / (op sum − head), the
    LM head being priced unscaled (no whole-decoder row includes it)."""
    head = _head_ms(est, df, spec)
    op_sum = df["latency_ms"].to_numpy() / df["in_model_factor"].to_numpy()
    return (df["latency_ms"].to_numpy() - head) / (op_sum - head)


def test_no_decoder_rows_means_factor_one(synthetic):
    est = Simulator(synthetic.profile)
    with_ctx = _run(est, "prefill", [1, 4], [128, 512], [1])
    plain = _run(est, "prefill", [1, 4], [128, 512], [1], in_model=False)
    assert (with_ctx["in_model_factor"] == 1.0).all()
    np.testing.assert_allclose(with_ctx["latency_ms"], plain["latency_ms"])


def test_prefill_factor_follows_the_fitted_law_and_is_clamped(ctx_est):
    df = _run(ctx_est, "prefill", [1], [96, 384, 768, 1536, 8, 100000], [1])
    f = dict(zip(df["seq_len"], _factors(ctx_est, df)))
    for tokens in (96, 384, 768, 1536):
        assert f[tokens] == pytest.approx(prefill_law(tokens), rel=1e-6)
    # Outside the measured range the factor is clamped, not extrapolated.
    assert f[8] == pytest.approx(PREFILL[96], rel=1e-6)
    assert f[100000] == pytest.approx(PREFILL[1536], rel=1e-6)


def test_fit_smooths_a_noisy_point(synthetic):
    """One outlier moves the law by a fraction of its own deviation, not all of it."""
    prof = _with_decoders(synthetic)
    rows = prof.rows.copy()
    hit = (rows["op"] == "dense_decoder") & (rows["causal"] == 1) & (rows["q_len"] == 384)
    rows.loc[hit, "median_us"] *= 1.3
    est = Simulator(Profile(rows=rows, meta=prof.meta))
    f = _factors(est, _run(est, "prefill", [1], [384], [1]))[0]
    assert prefill_law(384) < f < 1.3 * prefill_law(384)
    assert f / prefill_law(384) < 1.15


def test_latency_is_factor_times_layer_ops_plus_the_unscaled_head(ctx_est):
    kw = dict(methods=("static-width", "static-depth"), sparsities=(0.25, 0.5))
    a = _run(ctx_est, "prefill", [1, 2], [300, 1000], [1], **kw)
    b = _run(ctx_est, "prefill", [1, 2], [300, 1000], [1], in_model=False, **kw)
    head = _head_ms(ctx_est, b)
    law = prefill_law(np.clip(b["batch"] * b["seq_len"], 96, 1536))  # clamped to the measured tokens
    np.testing.assert_allclose(a["latency_ms"], law * (b["latency_ms"] - head) + head, rtol=1e-9)
    np.testing.assert_allclose(a["in_model_factor"], a["latency_ms"] / b["latency_ms"], rtol=1e-9)
    assert (a["in_model_factor"] > 1.0).all() and (b["in_model_factor"] == 1.0).all()
    # The head is the same in every family, so a factor > 1 on the layers alone raises speedups.
    assert (a["speedup"] > b["speedup"]).all()


def test_decode_factor_fits_batch_and_context(ctx_est):
    df = _run(ctx_est, "decode", [1, 2, 4, 64], [1], [128, 362, 1024, 1 << 20])
    f = dict(zip(zip(df["batch"], df["context_len"]), _factors(ctx_est, df)))
    for b, c in [(1, 128), (1, 1024), (4, 128), (4, 1024), (1, 362), (2, 128), (2, 362)]:
        assert f[(b, c)] == pytest.approx(decode_law(b, c), rel=1e-6)
    # Clamped to the calibrated box: a batch of 64 and a 1M context use the (4, 1024) corner.
    assert f[(64, 1 << 20)] == pytest.approx(DECODE[(4, 1024)], rel=1e-6)


def test_kv_cache_discipline_picks_its_own_rows(ctx_est):
    """The planted rows are HF (concat) rows; preallocated simulations have none: factor 1."""
    from pis.pruned import PruneOptions
    df = sweep(ctx_est, [SPEC], ["dense"], [0.0], ["decode"], [2], [1], [512],
               PruneOptions(kv_cache="preallocated"))
    assert df["in_model_factor"].iloc[0] == 1.0


def test_nearest_decoder_shape_is_used(ctx_est):
    other = SPEC.with_options(name="wide", hidden=8192, ffn=28672, heads=64, kv_heads=8, head_dim=128)
    assert ctx_est.correction.laws.nearest_dims(other) == (1024, 2816, 16, 4, 64)
    df = sweep(ctx_est, [other], ["dense"], [0.0], ["prefill"], [1], [384], [1])
    assert _factors(ctx_est, df, other)[0] == pytest.approx(PREFILL[384], rel=1e-6)


def test_op_sum_is_the_dense_decoder_without_lm_head(synthetic):
    est = Simulator(synthetic.profile)
    spec = SPEC.with_options(layers=2)
    no_head = decoder_op_sum(est, spec, "prefill", 2, 256)[0]
    full = sweep(est, [spec], ["dense"], [0.0], ["prefill"], [2], [256], [1], in_model=False)
    head = float(est.estimator.predict("gemm", {"m": 2, "n": spec.vocab, "k": spec.hidden}).time_us) / 1e3
    assert no_head / 1e3 == pytest.approx(full["latency_ms"].iloc[0] - head, rel=1e-9)


def test_v1_profile_without_decoder_columns_still_reads(synthetic, tmp_path):
    path = tmp_path / "v1.parquet"
    write_profile(Profile(synthetic.profile.rows, dict(synthetic.profile.meta, schema_version=1)), path)
    table = pq.read_table(path)
    table = table.drop_columns(list(SHAPE_COLUMNS_SINCE_V2))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    prof = read_profile(path)
    assert set(SHAPE_COLUMNS_SINCE_V2) <= set(prof.rows.columns)
    assert prof.rows["hidden"].isna().all()
    # A v2 file must carry them.
    pq.write_table(table.replace_schema_metadata(
        {**pq.read_schema(path).metadata, b"pis.schema_version": b"2"}), path)
    from pis.errors import ProfileError
    with pytest.raises(ProfileError, match="lacks profile columns: hidden"):
        read_profile(path)


def test_context_summary_lists_every_row(ctx_est):
    summary = ctx_est.correction.summary()
    assert len(summary) == len(PREFILL) + len(DECODE)
    assert {round(s["factor"], 6) for s in summary} == {round(v, 6) for v in [*PREFILL.values(), *DECODE.values()]}



def test_axes_with_one_measured_value_drop_out(synthetic):
    """Decode rows at batch 1 only: the law varies with context alone; any batch uses it."""
    prof = _with_decoders(synthetic)
    rows = prof.rows
    keep = ~((rows["op"] == "dense_decoder") & (rows["causal"] == 0) & (rows["batch"] != 1))
    est = Simulator(Profile(rows=rows[keep].reset_index(drop=True), meta=prof.meta))
    df = _run(est, "decode", [1, 8], [1], [128, 1024])
    f = dict(zip(zip(df["batch"], df["context_len"]), _factors(est, df)))
    assert f[(1, 128)] == pytest.approx(decode_law(1, 128), rel=1e-6)
    assert f[(8, 1024)] == pytest.approx(decode_law(1, 1024), rel=1e-6)
    assert np.isfinite(list(f.values())).all()


# --- routed families' own decoders (schema v3) -----------------------------------------------

def routed_law(tokens, s):
    return 1.3 * (np.asarray(tokens, dtype=float) / 96.0) ** 0.04 * np.exp(0.4 * np.asarray(s, dtype=float))


def _with_routed(synthetic, family: str = "dynamic-width") -> Profile:
    """The dense-decoder profile plus ``family``'s own prefill rows at s = 0.25 and 0.75,
    measured = law x op sum + its loop glue at the profile's per-op cost."""
    from pis.profiles.schema import ROUTED_DECODER_OPS

    base = _with_decoders(synthetic)
    est = Simulator(base)
    floor = est.estimator.glue_us_per_dispatch if est.estimator.glue_us_per_dispatch is not None else est.estimator.launch_us_per_op
    spec = ModelSpec("d", vocab=1, **DIMS)
    rows = []
    for s in (0.25, 0.75):
        for tokens in PREFILL:
            op_sum, _, glue = decoder_op_sum(est, spec, "prefill", 1, tokens, "preallocated", family, s)
            rows.append(dict(batch=1, q_len=tokens, kv_len=tokens, causal=1, sparsity_pct=round(100 * s),
                             median_us=float(routed_law(tokens, s)) * op_sum + glue * floor))
    return _add_decoder_rows(base, ROUTED_DECODER_OPS[family], rows)


def test_routed_family_takes_its_own_factor_from_its_rows(synthetic):
    from pis.simulator.points import Points

    est = Simulator(_with_routed(synthetic))
    ctx = est.correction
    assert ctx.has_own_rows("dynamic-width") and not ctx.has_own_rows("dynamic-depth")
    pts = Points.make("prefill", 1, np.array([96, 384, 384, 384, 1536]), 1, np.array([0.25, 0.5, 0.75, 0.0, 0.6]))
    own = ctx.factor(SPEC, pts, "concat", "dynamic-width")
    dense = ctx.factor(SPEC, pts, "concat")
    want = routed_law(pts.seq_len, pts.sparsity)
    # s > 0: the family's law, recovered exactly and interpolated in s (0.5 and 0.6 were not measured)
    np.testing.assert_allclose(own[[0, 1, 2, 4]], want[[0, 1, 2, 4]], rtol=1e-6)
    # s = 0 runs the dense path: the dense decoder's factor, as for every other family
    assert own[3] == pytest.approx(dense[3], rel=1e-12)
    np.testing.assert_allclose(dense, prefill_law(pts.seq_len), rtol=1e-6)
    assert (ctx.factor(SPEC, pts, "concat", "static-width") == dense).all()
    # Queries beyond the measured sparsities are clamped to them.
    far = Points.make("prefill", 1, 384, 1, np.array([0.05, 0.95]))
    np.testing.assert_allclose(ctx.factor(SPEC, far, "concat", "dynamic-width"),
                               routed_law(384, [0.25, 0.75]), rtol=1e-6)


def test_sweep_uses_the_routed_factor_only_for_its_family(synthetic):
    est = Simulator(_with_routed(synthetic))
    df = _run(est, "prefill", [1], [384], [1], methods=("dense", "dynamic-width", "dynamic-depth"),
              sparsities=(0.5,)).set_index("method")
    assert _factors(est, df.loc[["dense"]])[0] == pytest.approx(prefill_law(384), rel=1e-6)
    # Another routed family without rows of its own: exactly as without dynamic width's rows.
    before = _run(Simulator(_with_decoders(synthetic)), "prefill", [1], [384], [1], methods=("dynamic-depth",),
                  sparsities=(0.5,))
    assert df.loc["dynamic-depth", "latency_ms"] == before["latency_ms"].iloc[0]
    # dynamic width's latency is its own factor x op sum, plus its loop glue
    assert _factors(est, df.loc[["dynamic-width"]])[0] >= routed_law(384, 0.5) * (1 - 1e-9)
    summary = est.correction.summary()
    assert {s["executor"] for s in summary} == {"concat", "dynamic-width"}
    assert sorted({s["sparsity"] for s in summary if s["executor"] == "dynamic-width"}) == [0.25, 0.75]


def test_v2_profile_without_sparsity_column_still_reads(synthetic, tmp_path):
    from pis.errors import ProfileError
    from pis.profiles.schema import SHAPE_COLUMNS_SINCE_V3

    path = tmp_path / "v2.parquet"
    write_profile(Profile(synthetic.profile.rows, dict(synthetic.profile.meta, schema_version=2)), path)
    table = pq.read_table(path).drop_columns(list(SHAPE_COLUMNS_SINCE_V3))
    pq.write_table(table.replace_schema_metadata(pq.read_schema(path).metadata), path)
    assert read_profile(path).rows["sparsity_pct"].isna().all()
    pq.write_table(table.replace_schema_metadata(
        {**pq.read_schema(path).metadata, b"pis.schema_version": b"3"}), path)
    with pytest.raises(ProfileError, match="lacks profile columns: sparsity_pct"):
        read_profile(path)


# --- Hugging Face's framework cost (schema v4) -------------------------------------------------

FRAMEWORK = {"prefill": (1200.0, 4.0), "decode": (900.0, 5.0)}  # step µs, µs per framework op
TINY = dict(hidden=64, ffn=128, heads=2, kv_heads=1, head_dim=32)


def _framework_us(phase: str, host_ops: float) -> float:
    step, per_op = FRAMEWORK[phase]
    return step + per_op * host_ops


def _with_framework(synthetic, outlier: float = 1.0) -> Profile:
    """Dense rows measured = law x op sum + framework cost, and decoder_framework rows at two
    depths measured = op sum + framework cost: the fit must recover both exactly."""
    est = Simulator(synthetic.profile)
    spec = ModelSpec("d", vocab=1, **DIMS)
    dense = []
    for tokens, f in PREFILL.items():
        op_sum, host, _ = decoder_op_sum(est, spec, "prefill", 1, tokens)
        dense.append(dict(batch=1, q_len=tokens, kv_len=tokens, causal=1,
                          median_us=f * op_sum + _framework_us("prefill", host)))
    for (b, c), f in DECODE.items():
        op_sum, host, _ = decoder_op_sum(est, spec, "decode", b, c)
        dense.append(dict(batch=b, q_len=1, kv_len=c, causal=0, median_us=f * op_sum + _framework_us("decode", host)))
    tiny = []
    for layers in (1, 2, 4, 8):
        small = ModelSpec("t", vocab=1, layers=layers, **TINY)
        for phase, (b, n) in (("prefill", (1, 32)), ("prefill", (1, 64)), ("decode", (1, 256)), ("decode", (1, 1024))):
            op_sum, host, _ = decoder_op_sum(est, small, phase, b, n)
            q = n if phase == "prefill" else 1
            tiny.append(dict(batch=b, q_len=q, kv_len=n, causal=int(phase == "prefill"), layers=layers,
                             median_us=op_sum + _framework_us(phase, host), **TINY))
    tiny[2]["median_us"] *= outlier  # a disturbed measurement (layers 1, decode)
    return _add_decoder_rows(_add_decoder_rows(synthetic.profile, "dense_decoder", dense), "decoder_framework", tiny)


def test_framework_cost_is_recovered_and_adds_outside_the_factor(synthetic):
    from pis.simulator.points import Points

    ctx = Simulator(_with_framework(synthetic)).correction
    for phase, (step, per_op) in FRAMEWORK.items():
        fw = ctx.framework[phase]
        assert (fw.step_us, fw.us_per_dispatch) == (pytest.approx(step, rel=1e-6), pytest.approx(per_op, rel=1e-6))
    # The dense factor is what is left once the framework is taken out: the planted law.
    pts = Points.make("prefill", 1, np.array([96, 384, 1536]), 1, 0.0)
    np.testing.assert_allclose(ctx.factor(SPEC, pts, "concat"), prefill_law(pts.seq_len), rtol=1e-6)
    # A step of op sum 1000 µs issuing 100 ops: factor x 1000 + the framework's cost of 100 ops.
    got = ctx.terms(SPEC, pts, "concat").latency_us(_sums(1000.0, 100.0))
    np.testing.assert_allclose(got, prefill_law(pts.seq_len) * 1000.0 + 1200.0 + 4.0 * 100, rtol=1e-9)
    # The reference decoder's cache discipline has no Hugging Face framework (and no rows here).
    np.testing.assert_allclose(ctx.terms(SPEC, pts, "preallocated").latency_us(_sums(1000.0, 100.0)), 1000.0)


def test_framework_fit_shrugs_off_one_disturbed_row(synthetic):
    """One of eight decode rows timed 10x too slow (another process on a core) barely moves it."""
    fw = Simulator(_with_framework(synthetic, outlier=10.0)).correction.framework["decode"]
    step, per_op = FRAMEWORK["decode"]
    assert fw.step_us == pytest.approx(step, rel=0.05) and fw.us_per_dispatch == pytest.approx(per_op, rel=0.05)


def test_shallower_model_keeps_the_per_step_framework_cost(synthetic):
    """Static depth halves the layers: the framework's per-op part shrinks with them, its
    per-step part does not (a factor alone would have scaled both)."""
    est = Simulator(_with_framework(synthetic))
    kw = dict(methods=("dense", "static-depth"), sparsities=(0.5,))
    a = _run(est, "decode", [1], [1], [512], **kw).set_index("method")
    b = _run(est, "decode", [1], [1], [512], in_model=False, **kw).set_index("method")
    head = _head_ms(est, b)
    extra = (a["latency_ms"] - float(decode_law(1, 512)) * (b["latency_ms"] - head) - head) * 1e3  # framework µs
    step, per_op = FRAMEWORK["decode"]
    host = {n: decoder_op_sum(est, SPEC.with_options(layers=n), "decode", 1, 512)[1] for n in (2, 4)}
    assert extra["static-depth"] > step
    assert extra["dense"] - extra["static-depth"] == pytest.approx(per_op * (host[4] - host[2]), rel=1e-6)


def test_framework_rows_are_ignored_on_gpus():
    from tests.conftest import make_synthetic

    prof = make_synthetic("cuda").profile
    tiny = [dict(batch=1, q_len=1, kv_len=256, causal=0, layers=n, median_us=1000.0 * n, **TINY) for n in (2, 4)]
    assert Simulator(_add_decoder_rows(prof, "decoder_framework", tiny)).correction.framework == {}


# Step 19: the decoder at two FFN widths. GEMMs near their profiled speed, the other ops slower.
def gemm_law(tokens):
    return 0.95 * (np.asarray(tokens, dtype=float) / 96.0) ** 0.02


def other_law(tokens):  # one law, the other ops at 1.8 times the GEMMs' factor
    return 1.8 * gemm_law(tokens)


NARROW = dict(DIMS, ffn=704)


def _with_two_widths(synthetic) -> Profile:
    """dense_decoder rows at DIMS and at NARROW (prefill), each measured = gemm_law x GEMM op
    sum + other_law x the rest: the split fit must recover both laws."""
    from pis.simulator.inmodel.rows import decoder_sums

    est = Simulator(synthetic.profile)
    rows = []
    for dims in (DIMS, NARROW):
        spec = ModelSpec("d", vocab=1, **dims)
        for tokens in PREFILL:
            tot = decoder_sums(est.estimator, spec, "prefill", 1, tokens)
            gemm = float(tot.gemm_us[0])
            t = gemm_law(tokens) * gemm + other_law(tokens) * (float(tot.op_sum_us[0]) - gemm)
            rows.append(dict(batch=1, q_len=tokens, kv_len=tokens, causal=1, median_us=t, ffn=dims["ffn"]))
    return _add_decoder_rows(synthetic.profile, "dense_decoder", rows)


def test_two_widths_split_the_gemm_factor_from_the_other_ops(synthetic):
    from pis.simulator.points import Points

    est = Simulator(_with_two_widths(synthetic))
    ctx = est.correction
    assert ctx.laws.narrow == {("concat", (1024, 2816, 16, 4, 64)): (1024, 704, 16, 4, 64)}
    # The narrow decoder informs the wide one's law; it is not a shape of its own.
    assert ctx.laws.nearest_dims(SPEC.with_options(ffn=704)) == (1024, 2816, 16, 4, 64)
    pts = Points.make("prefill", 1, np.array([96, 200, 1536]), 1, 0.0)
    f_gemm, f_other = ctx.factors(SPEC, pts)
    np.testing.assert_allclose(f_gemm, gemm_law(pts.seq_len), rtol=1e-4)
    np.testing.assert_allclose(f_other, other_law(pts.seq_len), rtol=1e-4)
    with pytest.raises(ValueError, match="two factors"):
        ctx.factor(SPEC, pts)
    (split,) = ctx.splits()  # prefill rows only
    assert split["phase"] == "prefill" and split["narrow_ffn"] == 704 and split["rows"] == 6
    assert split["other_over_gemm"] == pytest.approx(1.8, rel=1e-4)
    # A sweep prices each family's GEMMs (less the unscaled head) and other ops by their own law.
    df = sweep(est, [SPEC], ["dense", "low-rank"], [0.5], ["prefill"], [1], [200], [1], breakdown=True)
    head = _head_ms(est, df)
    gemm = df["t_gemm_ms"].to_numpy()
    other = df["latency_ms"].to_numpy() / df["in_model_factor"].to_numpy() - gemm
    want = gemm_law(200) * (gemm - head) + other_law(200) * other + head
    np.testing.assert_allclose(df["latency_ms"], want, rtol=1e-4)
    # Low-rank shrinks the GEMMs, not the rest: its speedup is below what one factor would give.
    lr = df[df["method"] == "low-rank"].iloc[0]
    assert lr["in_model_factor"] > df[df["method"] == "dense"].iloc[0]["in_model_factor"]


def test_one_width_keeps_one_factor_on_both_parts(ctx_est):
    from pis.simulator.points import Points

    pts = Points.make("prefill", 1, np.array([96, 384]), 1, 0.0)
    f_gemm, f_other = ctx_est.correction.factors(SPEC, pts)
    np.testing.assert_array_equal(f_gemm, f_other)
    np.testing.assert_allclose(f_gemm, prefill_law(pts.seq_len), rtol=1e-6)


def test_profile_info_shows_the_split(synthetic, tmp_path):
    from click.testing import CliRunner

    from pis.profiles.cli import main as profile_main

    path = tmp_path / "two.parquet"
    write_profile(_with_two_widths(synthetic), path)
    shown = CliRunner().invoke(profile_main, ["info", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "GEMMs vs other ops in the model" in shown.output and "1.800" in shown.output


# Fresh allocations over glibc's mmap threshold fault in their pages on a CPU.
CLIFF = {(16, 8192): 64.0, (32, 8192): 128.0}  # (batch, context) -> MiB of each K/V append (bf16)
FAULT_US_PER_MIB = 150.0


def _with_cliff(prof: Profile) -> tuple[Profile, dict]:
    """``prof`` plus decode rows past the 32 MiB threshold: the law's corner factor times the op
    sum, plus :data:`FAULT_US_PER_MIB` per MiB of the step's fresh K/V appends."""
    from pis.simulator.inmodel.rows import decoder_sums

    est = Simulator(prof)
    spec = ModelSpec("d", vocab=1, **DIMS)
    rows, fresh = [], {}
    for (b, c), mib in CLIFF.items():
        tot = decoder_sums(est.estimator, spec, "decode", b, c)
        fresh[(b, c)] = float(tot.fresh_bytes[0]) / 2**20
        assert fresh[(b, c)] == pytest.approx(2 * DIMS["layers"] * mib, rel=1e-3)  # K and V, every layer
        t = DECODE[(4, 1024)] * float(tot.op_sum_us[0]) + FAULT_US_PER_MIB * fresh[(b, c)]
        rows.append(dict(batch=b, q_len=1, kv_len=c, causal=0, median_us=t))
    return _add_decoder_rows(prof, "dense_decoder", rows), fresh


def test_fresh_bytes_count_only_cache_appends_over_the_threshold():
    from pis.allocator import FRESH_ALLOC_THRESHOLD
    from pis.simulator.opsum import fresh_alloc_bytes

    numel = np.array([FRESH_ALLOC_THRESHOLD // 2, FRESH_ALLOC_THRESHOLD // 2 + 1, 1 << 26])
    np.testing.assert_array_equal(fresh_alloc_bytes("kv_concat", {"numel": numel}, 2),
                                  [0.0, 2.0 * numel[1], 2.0 * numel[2]])
    assert fresh_alloc_bytes("gather", {"numel": numel}, 2) == 0.0


def test_fresh_allocations_fit_their_own_cost_and_leave_the_law_alone(synthetic):
    prof, fresh = _with_cliff(_with_decoders(synthetic))
    est = Simulator(prof)
    fit = est.correction.first_touch()
    assert fit.rows == 2 and fit.us_per_mib == pytest.approx(FAULT_US_PER_MIB, rel=1e-6)
    # The rows past the threshold do not bend the law fitted to the others.
    df = _run(est, "decode", [1, 2, 4], [1], [128, 362, 1024])
    for (b, c), f in zip(zip(df["batch"], df["context_len"]), _factors(est, df)):
        assert f == pytest.approx(decode_law(b, c), rel=1e-6)
    # A sweep past the threshold adds the first-touch cost outside the factor.
    big = _run(est, "decode", [16], [1], [8192])
    op_sum_ms = big["latency_ms"].to_numpy() / big["in_model_factor"].to_numpy()
    head = _head_ms(est, big)
    fresh_mib = fresh[(16, 8192)] * SPEC.layers / DIMS["layers"]  # the sweep's model is deeper
    want = DECODE[(4, 1024)] * (op_sum_ms - head) + head + FAULT_US_PER_MIB * fresh_mib / 1e3
    np.testing.assert_allclose(big["latency_ms"].to_numpy(), want, rtol=1e-6)


def test_profiles_without_rows_past_the_threshold_add_no_fresh_cost(ctx_est):
    assert ctx_est.correction.first_touch() is None
    big = _run(ctx_est, "decode", [16], [1], [8192])
    head = _head_ms(ctx_est, big)
    op_sum_ms = big["latency_ms"].to_numpy() / big["in_model_factor"].to_numpy()
    np.testing.assert_allclose(big["latency_ms"].to_numpy(), DECODE[(4, 1024)] * (op_sum_ms - head) + head, rtol=1e-6)


def test_fresh_allocations_cost_nothing_on_gpus():
    from tests.conftest import make_synthetic

    prof, _ = _with_cliff(make_synthetic("cuda").profile)
    est = Simulator(prof)
    assert est.correction.first_touch() is None
    assert all(p.fresh_bytes == 0 for cps in est.correction.rows.values() for p in cps)


def test_profile_info_shows_the_first_touch_cost(synthetic, tmp_path):
    from click.testing import CliRunner

    from pis.profiles.cli import main as profile_main

    path = tmp_path / "cliff.parquet"
    write_profile(_with_cliff(_with_decoders(synthetic))[0], path)
    shown = CliRunner().invoke(profile_main, ["info", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "32 MiB mmap threshold: 150 µs per MiB" in shown.output and "2 decoder rows" in shown.output


def test_breakdown_reports_the_first_touch_cost(synthetic):
    prof, fresh = _with_cliff(_with_decoders(synthetic))
    est = Simulator(prof)
    df = sweep(est, [SPEC], ["dense"], [0.0], ["decode"], [1, 16], [1], [8192], breakdown=True)
    got = dict(zip(df["batch"], df["first_touch_ms"]))
    assert got[1] == 0.0
    want_mib = fresh[(16, 8192)] * SPEC.layers / DIMS["layers"]
    assert got[16] == pytest.approx(FAULT_US_PER_MIB * want_mib / 1e3, rel=1e-6)
