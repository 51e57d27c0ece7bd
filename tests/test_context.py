"""The in-context factor: measured whole dense decoders / their predicted op sums."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pis.profiles.schema import SHAPE_COLUMNS_SINCE_V2, op_bytes, op_flops
from pis.profiles.store import Profile, normalize_rows, read_profile, write_profile
from pis.simulator.context import decoder_op_sum
from pis.simulator.estimator import Estimator
from pis.simulator.models import ModelSpec
from pis.simulator.sweep import sweep

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
    est = Estimator(synthetic.profile)
    spec = ModelSpec("d", vocab=1, **DIMS)
    rows = []
    for tokens, f in PREFILL.items():
        t = f * decoder_op_sum(est, spec, "prefill", 1, tokens)[0]
        rows.append(dict(batch=1, q_len=tokens, kv_len=tokens, causal=1, median_us=t))
    for (b, c), f in decode.items():
        t = f * decoder_op_sum(est, spec, "decode", b, c)[0]
        rows.append(dict(batch=b, q_len=1, kv_len=c, causal=0, median_us=t))
    df = pd.DataFrame(rows).assign(op="dense_decoder", dtype="bf16", repeats=10, status="ok",
                                   backend="test", **DIMS)
    df["p10_us"], df["p90_us"] = df["median_us"] * 0.98, df["median_us"] * 1.02
    shape = {c: df[c].to_numpy() for c in ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim",
                                          "causal", "hidden", "ffn", "layers")}
    df["flops"], df["bytes"] = op_flops("dense_decoder", shape), op_bytes("dense_decoder", shape, "bf16")
    rows = normalize_rows(pd.concat([synthetic.profile.rows, df], ignore_index=True))
    return Profile(rows=rows, meta=dict(synthetic.profile.meta))


@pytest.fixture(scope="module")
def ctx_est(synthetic) -> Estimator:
    return Estimator(_with_decoders(synthetic))


def _run(est, phase, batches, seqs, ctxs, in_context=True, methods=("dense",), sparsities=(0.0,)):
    return sweep(est, [SPEC], list(methods), list(sparsities), [phase], batches, seqs, ctxs,
                 in_context=in_context)


def test_no_decoder_rows_means_factor_one(synthetic):
    est = Estimator(synthetic.profile)
    with_ctx = _run(est, "prefill", [1, 4], [128, 512], [1])
    plain = _run(est, "prefill", [1, 4], [128, 512], [1], in_context=False)
    assert (with_ctx["context_factor"] == 1.0).all()
    np.testing.assert_allclose(with_ctx["latency_ms"], plain["latency_ms"])


def test_prefill_factor_follows_the_fitted_law_and_is_clamped(ctx_est):
    df = _run(ctx_est, "prefill", [1], [96, 384, 768, 1536, 8, 100000], [1])
    f = dict(zip(df["seq_len"], df["context_factor"]))
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
    est = Estimator(Profile(rows=rows, meta=prof.meta))
    f = _run(est, "prefill", [1], [384], [1])["context_factor"].iloc[0]
    assert prefill_law(384) < f < 1.3 * prefill_law(384)
    assert f / prefill_law(384) < 1.15


def test_latency_is_factor_times_op_sum_and_speedups_are_unchanged(ctx_est):
    kw = dict(methods=("static-width", "static-depth"), sparsities=(0.25, 0.5))
    a = _run(ctx_est, "prefill", [1, 2], [300, 1000], [1], **kw)
    b = _run(ctx_est, "prefill", [1, 2], [300, 1000], [1], in_context=False, **kw)
    np.testing.assert_allclose(a["latency_ms"], b["latency_ms"] * a["context_factor"])
    np.testing.assert_allclose(a["speedup"], b["speedup"])
    assert (a["context_factor"] > 1.0).all() and (b["context_factor"] == 1.0).all()


def test_decode_factor_fits_batch_and_context(ctx_est):
    df = _run(ctx_est, "decode", [1, 2, 4, 64], [1], [128, 362, 1024, 1 << 20])
    f = {(r.batch, r.context_len): r.context_factor for r in df.itertuples()}
    for b, c in [(1, 128), (1, 1024), (4, 128), (4, 1024), (1, 362), (2, 128), (2, 362)]:
        assert f[(b, c)] == pytest.approx(decode_law(b, c), rel=1e-6)
    # Clamped to the calibrated box: a batch of 64 and a 1M context use the (4, 1024) corner.
    assert f[(64, 1 << 20)] == pytest.approx(DECODE[(4, 1024)], rel=1e-6)


def test_kv_cache_discipline_picks_its_own_rows(ctx_est):
    """The planted rows are HF (concat) rows; preallocated simulations have none: factor 1."""
    from pis.simulator.pruning import PruneOptions
    df = sweep(ctx_est, [SPEC], ["dense"], [0.0], ["decode"], [2], [1], [512],
               PruneOptions(kv_cache="preallocated"))
    assert df["context_factor"].iloc[0] == 1.0


def test_nearest_decoder_shape_is_used(ctx_est):
    other = SPEC.with_options(name="wide", hidden=8192, ffn=28672, heads=64, kv_heads=8, head_dim=128)
    assert ctx_est.context.nearest_dims(other) == (1024, 2816, 16, 4, 64)
    df = sweep(ctx_est, [other], ["dense"], [0.0], ["prefill"], [1], [384], [1])
    assert df["context_factor"].iloc[0] == pytest.approx(PREFILL[384], rel=1e-6)


def test_op_sum_is_the_dense_decoder_without_lm_head(synthetic):
    est = Estimator(synthetic.profile)
    spec = SPEC.with_options(layers=2)
    no_head = decoder_op_sum(est, spec, "prefill", 2, 256)[0]
    full = sweep(est, [spec], ["dense"], [0.0], ["prefill"], [2], [256], [1], in_context=False)
    head = float(est.predict("gemm", {"m": 2, "n": spec.vocab, "k": spec.hidden}).time_us) / 1e3
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
    summary = ctx_est.context.summary()
    assert len(summary) == len(PREFILL) + len(DECODE)
    assert {round(s["factor"], 6) for s in summary} == {round(v, 6) for v in [*PREFILL.values(), *DECODE.values()]}



def test_axes_with_one_measured_value_drop_out(synthetic):
    """Decode rows at batch 1 only: the law varies with context alone; any batch uses it."""
    prof = _with_decoders(synthetic)
    rows = prof.rows
    keep = ~((rows["op"] == "dense_decoder") & (rows["causal"] == 0) & (rows["batch"] != 1))
    est = Estimator(Profile(rows=rows[keep].reset_index(drop=True), meta=prof.meta))
    df = _run(est, "decode", [1, 8], [1], [128, 1024])
    f = {(r.batch, r.context_len): r.context_factor for r in df.itertuples()}
    assert f[(1, 128)] == pytest.approx(decode_law(1, 128), rel=1e-6)
    assert f[(8, 1024)] == pytest.approx(decode_law(1, 1024), rel=1e-6)
    assert np.isfinite(list(f.values())).all()
