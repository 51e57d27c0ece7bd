"""Op graphs of the pruning families: analytic counts, s = 0 equals dense, monotonicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pis.errors import PisError
from pis.profiles.schema import op_flops
from pis.models import PRESETS, ModelSpec, load_model
from pis.pruned import (PruneOptions, calibration_shapes, layers_kept, lowrank_rank, pruned_ffn, pruned_heads,
                        pruned_hidden)
from pis.simulator.api import Simulator
from pis.simulator.dispatch import GLUE_OP
from pis.simulator.points import Points
from pis.simulator.pruning import FAMILIES, build_ops
from pis.simulator.sweep import sweep

SPEC = PRESETS["llama-3.1-8b"]


def total_flops(method: str, spec: ModelSpec, pts: Points, opts: PruneOptions | None = None) -> np.ndarray:
    n = len(pts)
    out = np.zeros(n)
    for g in build_ops(method, spec, pts, opts):
        if g.op == GLUE_OP:  # loop glue: no kernel, no FLOPs
            continue
        shape = {k: np.broadcast_to(v, (n,)) for k, v in g.shape.items()}
        out += np.broadcast_to(g.count * g.work_scale, (n,)) * op_flops(g.op, shape)
    return out


def analytic_prefill_flops(spec: ModelSpec, b: int, s: int) -> float:
    """2·tokens·params of the decoder projections + causal attention + lm_head on the last token."""
    d, hd = spec.hidden, spec.head_dim
    proj = d * spec.q_width + 2 * d * spec.kv_width + spec.q_width * d + 3 * d * spec.ffn
    attn = 4 * b * spec.heads * hd * (s * (s + 1) / 2)
    lm = 2 * b * spec.vocab * d
    return spec.layers * (2 * b * s * proj + attn) + lm


def test_dense_prefill_flops_match_analytic_count() -> None:
    pts = Points.make("prefill", [1, 4], [1024, 2048], 0, 0.0)
    got = total_flops("dense", SPEC, pts)
    mem_ops = 0.03  # norms/rope/silu FLOPs are < 0.03 % of the total
    for i, (b, s) in enumerate([(1, 1024), (4, 2048)]):
        want = analytic_prefill_flops(SPEC, b, s)
        assert abs(got[i] - want) / want < mem_ops / 100
    # And the well-known figure: ~2 x 8.0e9 x 1024 FLOPs for Llama-3.1-8B minus embeddings.
    assert 14.2e12 < got[0] < 14.8e12


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("method", list(FAMILIES))
def test_sparsity_zero_is_dense(method: str, phase: str, synthetic) -> None:
    est = Simulator(synthetic.profile, allow_roofline=True)
    for name in PRESETS:
        df = sweep(est, [PRESETS[name]], ["dense", method], [0.0], [phase], [1, 8], [512], [2048])
        dense, fam = df[df.method == "dense"], df[df.method == method]
        np.testing.assert_allclose(fam.latency_ms.to_numpy(), dense.latency_ms.to_numpy(), rtol=1e-12)
        np.testing.assert_allclose(fam.flops.to_numpy(), dense.flops.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize("method", list(FAMILIES))
def test_every_family_simulates_every_preset(method: str, synthetic) -> None:
    est = Simulator(synthetic.profile, allow_roofline=True)
    hi = 0.5 if method == "semi-structured" else 0.75
    df = sweep(est, list(PRESETS.values()), [method], [0.25, hi], ["prefill", "decode"], [1, 16], [256], [1024])
    assert len(df) == (len(PRESETS) * 2 * 2 * 2 if method != "dense" else len(PRESETS) * 2 * 2)
    assert np.isfinite(df.latency_ms).all() and (df.latency_ms > 0).all()
    assert (df.theoretical_speedup > 0).all()


MONOTONE_FLOPS = ["static-depth", "dynamic-depth", "static-width", "static-width-hidden",
                  "unstructured", "low-rank", "sparse-attention", "semi-structured"]


@settings(max_examples=30, deadline=None)
@given(method=st.sampled_from(MONOTONE_FLOPS), phase=st.sampled_from(["prefill", "decode"]),
       s=st.lists(st.floats(0.0, 0.5), min_size=2, max_size=6),
       batch=st.integers(1, 64), seq=st.integers(16, 4096), ctx=st.integers(16, 32768),
       model=st.sampled_from(sorted(PRESETS)))
def test_flops_non_increasing_in_sparsity(method, phase, s, batch, seq, ctx, model) -> None:
    # Routed families pay their router, and static-width-hidden its residual maps, once s > 0:
    # compare positive sparsities among themselves.
    s = np.sort(np.asarray(s))
    if method in ("dynamic-depth", "sparse-attention", "dynamic-width", "static-width-hidden"):
        s = s[s > 0.01]
    if len(s) < 2:
        return
    pts = Points.make(phase, batch, seq, ctx, s)
    f = total_flops(method, PRESETS[model], pts)
    assert (np.diff(f) <= 1e-9 * f[0]).all()


@settings(max_examples=20, deadline=None)
@given(method=st.sampled_from(["static-depth", "static-width", "low-rank", "dynamic-depth"]),
       phase=st.sampled_from(["prefill", "decode"]), batch=st.sampled_from([1, 4, 32]),
       s=st.lists(st.floats(0.05, 0.85), min_size=2, max_size=5))
def test_latency_non_increasing_where_family_guarantees(synthetic_est, method, phase, batch, s) -> None:
    s = sorted(s)
    df = sweep(synthetic_est, [SPEC], [method], s, [phase], [batch], [512], [4096])
    lat = df.latency_ms.to_numpy()
    # Interpolation noise on the profile is allowed a small slack; rounding makes plateaus.
    assert (np.diff(lat) <= 0.02 * lat[:-1]).all(), lat


@pytest.fixture(scope="module")
def synthetic_est():
    from conftest import make_synthetic
    return Simulator(make_synthetic().profile, allow_roofline=True)


def test_static_depth_counts_layers_and_sublayers() -> None:
    assert int(layers_kept(SPEC, 0.25)) == 24
    pts = Points.make("decode", 1, 1, 128, 0.25)
    ops = build_ops("static-depth", SPEC, pts, PruneOptions(granularity="sublayer"))
    q = [g for g in ops if g.name == "q_proj"][0]
    down = [g for g in ops if g.name == "down_proj"][0]
    assert float(q.count[0]) == 32 - 8 and float(down.count[0]) == 32 - 8  # 16 sublayers: 8 + 8
    pts = Points.make("decode", 1, 1, 128, 0.5 / 32 * 3)  # 3 of 64 sublayers: 2 attention, 1 MLP
    ops = build_ops("static-depth", SPEC, pts, PruneOptions(granularity="sublayer"))
    assert float([g for g in ops if g.name == "q_proj"][0].count[0]) == 30
    assert float([g for g in ops if g.name == "down_proj"][0].count[0]) == 31


def test_width_rounding() -> None:
    assert int(pruned_heads(SPEC, 0.5)) == 16 and int(pruned_heads(SPEC, 0.99)) == 8
    assert int(pruned_heads(SPEC, 0.3)) % SPEC.kv_heads == 0
    assert int(pruned_ffn(SPEC, 0.5)) == 7168 and int(pruned_ffn(SPEC, 0.3)) % 64 == 0
    assert int(pruned_hidden(SPEC, 0.25)) == 3072
    r = int(lowrank_rank(4096, 4096, 0.5))
    assert r == 1024 and 2 * r * 4096 <= 0.5 * 4096 * 4096
    assert (int(lowrank_rank(4096, 4096, 0.5, 128)) % 128) == 0


def test_semi_structured_uses_24_gemms_on_2s_of_layers() -> None:
    pts = Points.make("decode", 1, 1, 128, 0.25)
    ops = build_ops("semi-structured", SPEC, pts)
    sparse = [g for g in ops if g.op == "gemm_2to4" and g.name == "q_proj.2:4"][0]
    dense = [g for g in ops if g.op == "gemm" and g.name == "q_proj"][0]
    assert float(sparse.count[0]) == 16 and float(dense.count[0]) == 16


def test_semi_structured_needs_24_ops_in_profile(synthetic) -> None:
    from pis.errors import MissingOpError
    with pytest.raises(MissingOpError, match="gemm_2to4"):
        sweep(Simulator(synthetic.profile), [SPEC], ["semi-structured"], [0.5], ["decode"], [1], [1], [128])


def test_bad_sparsities_are_one_line_errors() -> None:
    pts = Points.make("prefill", 1, 128, 0, 1.0)
    with pytest.raises(PisError, match=r"outside \[0, 1\)"):
        build_ops("static-width", SPEC, pts)
    with pytest.raises(PisError, match="outside"):
        build_ops("semi-structured", SPEC, Points.make("prefill", 1, 128, 0, 0.6))
    with pytest.raises(PisError, match="removes all 32 layers"):
        build_ops("static-depth", SPEC, Points.make("prefill", 1, 128, 0, 0.99))
    with pytest.raises(PisError, match="unknown method"):
        build_ops("magic", SPEC, pts)


def test_layer_sparsity() -> None:
    pts = Points.make("decode", 1, 1, 128, 0.0)
    keep_half = PruneOptions(layer_sparsity=tuple([0.0, 1.0] * 16))
    q = [g for g in build_ops("static-depth", SPEC, pts, keep_half) if g.name == "q_proj"]
    assert sum(float(g.count[0]) for g in q) == 16
    with pytest.raises(PisError, match="0 \\(keep\\) or 1"):
        build_ops("static-depth", SPEC, pts, PruneOptions(layer_sparsity=tuple([0.5] * 32)))
    with pytest.raises(PisError, match="has 3 values"):
        build_ops("static-width", SPEC, pts, PruneOptions(layer_sparsity=(0.1, 0.2, 0.3)))
    with pytest.raises(PisError, match="every layer at once"):
        build_ops("static-width-hidden", SPEC, pts, PruneOptions(layer_sparsity=tuple([0.5] * 32)))
    # Non-uniform static width: per-layer head counts follow the values.
    vals = tuple([0.0] * 16 + [0.5] * 16)
    q = [g for g in build_ops("static-width", SPEC, pts, PruneOptions(layer_sparsity=vals)) if g.name == "q_proj"]
    widths = sorted((int(g.shape["n"][0]), float(g.count[0])) for g in q)
    assert widths == [(16 * 128, 16.0), (32 * 128, 16.0)]


def test_unstructured_has_no_speedup_but_a_flops_bound(synthetic) -> None:
    df = sweep(Simulator(synthetic.profile), [SPEC], ["unstructured"], [0.5], ["prefill"], [1], [512], [0])
    row = df.iloc[0]
    assert row.speedup == pytest.approx(1.0)
    assert row.flops_ratio > 1.9 and row.theoretical_speedup > 1.5


def test_calibration_shapes_cover_width_pruned_gemms() -> None:
    shapes = set(calibration_shapes(SPEC))
    for s in (0.1, 0.5, 0.9):
        assert (int(pruned_ffn(SPEC, s)), SPEC.hidden) in shapes
        assert (SPEC.hidden, int(pruned_heads(SPEC, s)) * SPEC.head_dim) in shapes
    assert (SPEC.vocab, SPEC.hidden) in shapes


def test_model_config_json(tmp_path) -> None:
    cfg = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
           "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 8000}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    spec = load_model(str(p))
    assert spec.head_dim == 64 and spec.kv_heads == 4
    p.write_text(json.dumps({**cfg, "num_key_value_heads": 5}))
    with pytest.raises(PisError, match="not divisible"):
        load_model(str(p))
    p.write_text("{not json")
    with pytest.raises(PisError, match="cannot read"):
        load_model(str(p))
    with pytest.raises(PisError, match="unknown model"):
        load_model("llama-9")


def test_dynamic_width_decode_gathers_each_groups_kv_rows() -> None:
    """Decode: every group call copies its tokens' K and V rows out of the batch cache."""
    spec = ModelSpec("dw", hidden=1024, ffn=2816, layers=4, heads=16, kv_heads=4, head_dim=64, vocab=8192)
    pts = Points.make("decode", np.array([8]), np.array([1]), np.array([512]), 0.5)
    groups = [g for g in build_ops("dynamic-width", spec, pts) if g.name == "kv_gather"]
    calls = sum(float(np.broadcast_to(g.count, (1,))[0]) / 2 for g in groups)
    elems = sum(float(np.broadcast_to(g.count * g.shape["numel"], (1,))[0]) for g in groups)
    # 8 tokens x 2 of 4 head groups each = 16 group-token picks per layer, 4 layers.
    assert calls == 4 * 4
    assert {g.op for g in groups} == {"kv_concat"}  # a cold cache read, not a warm routed gather
    assert elems == 4 * 2 * 16 * pts.kv_len[0] * spec.head_dim
    prefill = Points.make("prefill", np.array([8]), np.array([128]), np.array([128]), 0.5)
    assert not any(g.name == "kv_gather" for g in build_ops("dynamic-width", spec, prefill))


def test_sparse_attention_decode_gathers_its_kept_blocks_from_the_cold_cache():
    spec = ModelSpec("sa", hidden=1024, ffn=2816, layers=4, heads=16, kv_heads=4, head_dim=64, vocab=8192)
    pts = Points.make("decode", np.array([4]), np.array([1]), np.array([2048]), 0.75)
    (g,) = [g for g in build_ops("sparse-attention", spec, pts) if g.name == "kv_block_gather"]
    assert g.op == "kv_concat" and float(np.broadcast_to(g.count, (1,))[0]) == 2 * 4
    # a quarter of the 2049 cached tokens' blocks (block 64: 33 blocks, 9 kept), K and V apart
    assert int(np.broadcast_to(g.shape["numel"], (1,))[0]) == 4 * 4 * 9 * 64 * 64
