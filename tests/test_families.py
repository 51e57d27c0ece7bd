"""The study's op graphs beside pis's, and graph execution, against simulator/FAMILIES.md.

Expected numbers are worked by hand from FAMILIES.md for Llama-3.1-8B (L 32, H 32, G 8, d 128,
D 4096, F 14336, V 128256).
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from pis.errors import PisError
from pis.models import PRESETS
from pis.profiles.store import Profile, normalize_rows, write_profile
from pis.pruned import VARIANT_NAMES, PruneOptions
from pis.simulator.api import Simulator
from pis.simulator.inmodel.graph_replay import fit_graph_replay
from pis.simulator.inmodel.rows import DecoderRow
from pis.simulator.opsum import evaluate
from pis.simulator.points import Points
from pis.simulator.pruning import FAMILIES, build_ops

SPEC = PRESETS["llama-3.1-8b"]
STUDY = PruneOptions(execution="eager", kv_cache="preallocated", op_graph="study")
PIS = PruneOptions(execution="eager", kv_cache="preallocated", op_graph="pis")
GRAPH = PruneOptions(execution="graph", kv_cache="preallocated", op_graph="study")


def _pts(phase: str, s: float, batch: int = 4, length: int = 1024) -> Points:
    seq, ctx = (length, 1) if phase == "prefill" else (1, length)
    return Points.make(phase, np.array([batch]), np.array([seq]), np.array([ctx]), s)


def _ops(method: str, phase: str, s: float, opts: PruneOptions, **kw):
    """{group name: (op, count, shape)} of the groups that run (count > 0)."""
    out: dict = {}
    for g in build_ops(method, SPEC, _pts(phase, s, **kw), opts):
        c = float(np.asarray(g.count).reshape(-1)[0])
        if c > 0:
            out.setdefault(g.name, []).append((g.op, c, {k: int(np.asarray(v).reshape(-1)[0]) for k, v in g.shape.items()}))
    return out


def _signature(method, phase, s, opts, **kw):
    return sorted((name, op, c, tuple(sorted(shape.items())))
                  for name, groups in _ops(method, phase, s, opts, **kw).items() for op, c, shape in groups)


@pytest.mark.parametrize("opts", [STUDY, PIS, GRAPH], ids=["study", "pis", "graph"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("method", list(FAMILIES))
def test_sparsity_zero_runs_the_dense_graph_in_every_variant_and_regime(method, phase, opts):
    assert _signature(method, phase, 0.0, opts) == _signature("dense", phase, 0.0, opts)


def test_static_width_study_prunes_whole_kv_groups():
    ops = _ops("static-width", "decode", 0.3, STUDY)
    # int(0.7 · 8) = 5 KV heads, their 5 · 4 = 20 query heads; FFN int(0.7 · 14336) = 10035 -> 10048
    assert ops["k_proj"][0][2]["n"] == ops["v_proj"][0][2]["n"] == 5 * 128
    assert ops["q_proj"][0][2]["n"] == 20 * 128 and ops["o_proj"][0][2]["k"] == 20 * 128
    attn = ops["attention"][0][2]
    assert (attn["heads"], attn["kv_heads"]) == (20, 5)
    assert ops["gate_proj"][0][2]["n"] == 10048 and ops["down_proj"][0][2]["k"] == 10048
    # pis's variant keeps every KV head: query heads round(0.7 · 32 / 8) · 8 = 24, FFN to 64: 10048
    pis = _ops("static-width", "decode", 0.3, PIS)
    assert pis["k_proj"][0][2]["n"] == 8 * 128 and pis["attention"][0][2]["heads"] == 24


def test_static_width_study_shrinks_the_kv_cache_it_appends_to():
    concat = PruneOptions(execution="eager", kv_cache="concat", op_graph="study")
    ops = _ops("static-width", "decode", 0.5, concat, batch=2, length=1000)
    (op, count, shape), = ops["kv_append"]
    assert op == "kv_concat" and count == 2 * 32 and shape["numel"] == 2 * 4 * 1001 * 128


@pytest.mark.parametrize("s, study_removed, pis_removed", [(0.26, 8, 8), (0.3, 9, 10), (0.5, 16, 16)])
def test_static_depth_study_floors_sublayers(s, study_removed, pis_removed):
    study = _ops("static-depth", "prefill", s, STUDY)
    pis = _ops("static-depth", "prefill", s, PIS)
    assert study["q_proj"][0][1] == study["gate_proj"][0][1] == 32 - study_removed
    assert pis["q_proj"][0][1] == pis["gate_proj"][0][1] == 32 - pis_removed


def test_low_rank_study_rounds_the_rank_up_to_16():
    # gate: N 14336, K 4096: NK/(N+K) = 3185.8; at s = 0.5, int(1592.9) = 1592 -> 1600 (pis: 1536)
    assert _ops("low-rank", "decode", 0.5, STUDY)["gate_proj.A"][0][2]["n"] == 1600
    assert _ops("low-rank", "decode", 0.5, PIS)["gate_proj.A"][0][2]["n"] == 1536


def test_hidden_width_study_rounds_up_to_16():
    # s = 0.31: D' = int(0.69 · 4096) = 2826 -> 2832; pis round(0.69 · 4096 / 64) · 64 = 2816
    assert _ops("static-width-hidden", "decode", 0.31, STUDY)["residual_map"][0][2]["n"] == 2832
    assert _ops("static-width-hidden", "decode", 0.31, PIS)["residual_map"][0][2]["n"] == 2816


def test_semi_structured_study_sparsifies_every_layer():
    study = _ops("semi-structured", "decode", 0.25, STUDY)
    assert study["q_proj.2:4"][0][1] == 32 and "q_proj" not in study
    pis = _ops("semi-structured", "decode", 0.25, PIS)  # a fraction 2s = 0.5 of the layers
    assert pis["q_proj.2:4"][0][1] == 16 and pis["q_proj"][0][1] == 16
    assert _ops("semi-structured", "decode", 0.5, GRAPH)["q_proj.2:4"][0][0] == "gemm_2to4_graph"


def test_dynamic_depth_masked_keeps_tokens_by_probability_without_gathers():
    ops = _ops("dynamic-depth", "decode", 0.5, STUDY, batch=1)
    # Router D -> 16 -> 2 and an argmax on every token, per sublayer.
    assert ops["attn_router.down"][0][2]["n"] == 16 and ops["attn_router.up"][0][2]["n"] == 2
    # Batch 1: the sublayer's masked work runs with probability 1 - s = 0.5, on its one token.
    assert ops["q_proj"][0][1] == pytest.approx(32 * 0.5) and ops["q_proj"][0][2]["m"] == 1
    # k and v run on every token, every step; no gather or scatter anywhere.
    assert ops["k_proj"][0][1] == 32 and ops["k_proj"][0][2]["m"] == 1
    moved = {name for name, groups in ops.items() for op, _, _ in groups if op in ("gather", "scatter_add")}
    assert moved == {"embedding"}
    big = _ops("dynamic-depth", "decode", 0.5, STUDY, batch=32)
    # Batch 32: some token is kept almost surely; 16 of 32 rows on average run the masked GEMMs.
    assert big["q_proj"][0][1] == pytest.approx(32 * (1 - 0.5 ** 32)) and big["q_proj"][0][2]["m"] == 16
    assert big["masked_attention"][0][2]["kv_len"] == 1025  # the full cache
    pre = _ops("dynamic-depth", "prefill", 0.25, STUDY, batch=2, length=1000)
    assert pre["q_proj"][0][2]["m"] == 1500 and pre["k_proj"][0][2]["m"] == 2000
    assert pre["masked_attention"][0][2]["q_len"] == 750 and pre["masked_attention"][0][2]["kv_len"] == 1000


def test_sparse_attention_tiles_skip_without_gathering():
    dec = _ops("sparse-attention", "decode", 0.75, STUDY)
    assert dec["attention"][0][0] == "attn_block_sparse" and dec["attention"][0][2]["sparsity_pct"] == 75
    assert "kv_block_gather" not in dec and "block_topk" not in dec and "block_scores" not in dec
    pre = _ops("sparse-attention", "prefill", 0.5, STUDY, batch=1, length=1024)
    # Pooled block scores over 16 blocks of 64: a GEMM of 32 heads x 16 query blocks x 16 key blocks.
    assert pre["block_scores"][0][2] == {"m": 32 * 16, "n": 16, "k": 128}
    pis = _ops("sparse-attention", "decode", 0.75, PIS)
    assert pis["kv_block_gather"][0][0] == "kv_concat" and "block_topk" in pis


def test_graph_execution_fuses_norm_and_rope_writes_the_cache_in_place_and_keeps_every_logit():
    dec = _ops("dense", "decode", 0.0, GRAPH, batch=2, length=1000)
    assert dec["input_norm"][0][0] == "rmsnorm_fused" and dec["final_norm"][0][0] == "rmsnorm_fused"
    assert dec["rope"][0][0] == "rope_fused" and dec["rope"][0][2]["numel"] == 2 * (32 + 8) * 128
    assert "rope_q" not in dec and "kv_append" not in dec
    assert dec["kv_write"][0][1] == 2 * 32 and dec["kv_write"][0][2]["numel"] == 2 * 8 * 128
    assert _ops("dense", "prefill", 0.0, GRAPH, batch=2, length=100)["lm_head"][0][2]["m"] == 200
    assert _ops("dense", "prefill", 0.0, PIS, batch=2, length=100)["lm_head"][0][2]["m"] == 2


def test_graph_execution_prices_kernels_without_the_launch_floor(make_synthetic):
    sim = Simulator(make_synthetic("cuda").profile)
    pts = _pts("decode", 0.0, batch=1, length=512)
    groups = build_ops("dense", SPEC, pts, GRAPH)
    with_floor, without = evaluate(sim.estimator, groups, 1, True), evaluate(sim.estimator, groups, 1, False)
    assert without.op_sum_us[0] < with_floor.op_sum_us[0]
    assert without.calls[0] == with_floor.calls[0] > 32 * 10


def test_profiles_take_their_device_defaults_and_a_cpu_refuses_graph(make_synthetic):
    assert Simulator(make_synthetic("cuda").profile).resolve().execution == "graph"
    cpu = Simulator(make_synthetic("cpu").profile)
    assert cpu.resolve() == PruneOptions(execution="eager", kv_cache="concat", op_graph="pis")
    with pytest.raises(PisError, match="graph execution"):
        cpu.resolve(PruneOptions(execution="graph"))
    with pytest.raises(PisError, match="in place"):
        PruneOptions(execution="graph", kv_cache="concat")


def test_variants_accept_the_families_names(make_synthetic):
    opts = PruneOptions(op_graph="pis", variants=(("static-width", "kv-groups"), ("low-rank", "study")))
    assert opts.variant("static-width") == "study" and opts.variant("low-rank") == "study"
    assert opts.variant("dynamic-depth") == "pis"
    for family, names in VARIANT_NAMES.items():
        assert PruneOptions(variants=((family, names[1]),)).variant(family) == "pis"
    with pytest.raises(PisError, match="one op graph"):
        PruneOptions(variants=(("dense", "study"),))
    with pytest.raises(PisError, match="kv-groups or query-heads"):
        PruneOptions(variants=(("static-width", "tiles"),))


def test_cli_regime_errors_are_one_line_exit_2(synthetic_file, make_synthetic, tmp_path):
    from pis.simulator.cli import main

    run = lambda *a: CliRunner().invoke(main, list(a))  # noqa: E731
    for args, why in ((["--execution", "graph"], "needs a GPU profile"),
                      (["--variant", "static-width"], "FAMILY=NAME"),
                      (["--variant", "static-width=tiles"], "kv-groups or query-heads")):
        r = run("--profile", synthetic_file, "--method", "static-width", *args)
        assert r.exit_code == 2 and why in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1
    gpu = tmp_path / "gpu.parquet"
    write_profile(make_synthetic("cuda").profile, gpu)
    r = run("--profile", str(gpu), "--execution", "graph", "--kv-cache", "concat")
    assert r.exit_code == 2 and "in place" in r.output


def test_stand_ins_for_graph_kernels_are_flagged(make_synthetic):
    est = Simulator(make_synthetic("cuda").profile).estimator
    for op in ("rmsnorm_fused", "rope_fused", "kv_write", "fill"):
        assert est.predict(op, {"numel": 1 << 16}).extrapolated.all(), op
    assert not est.predict("kv_concat", {"numel": 1 << 16}).extrapolated.any()  # the same copy
    shape = dict(batch=2, q_len=1, kv_len=4096, heads=32, kv_heads=8, head_dim=128, causal=0)
    sparse = est.predict("attn_block_sparse", {**shape, "sparsity_pct": 75})
    kept = est.predict("attn_decode", {**shape, "kv_len": 1024})  # a quarter of the 64-key blocks
    assert sparse.extrapolated.all() and sparse.time_us == pytest.approx(kept.time_us)
    pre = dict(batch=1, q_len=2048, kv_len=2048, heads=32, kv_heads=8, head_dim=128, causal=1)
    half = est.predict("attn_block_sparse", {**pre, "sparsity_pct": 50}).time_us
    assert half == pytest.approx(0.5 * est.predict("attn_prefill", pre).time_us)


def test_graph_replay_law_recovers_a_planted_factor_and_per_kernel_cost():
    rows = [DecoderRow(phase="decode", batch=b, length=1024, measured_us=0.8 * t - 1.5 * 300, op_sum_us=t,
                       kernels=300) for b, t in ((1, 2000.0), (8, 3000.0), (32, 9000.0))]
    law = fit_graph_replay(rows)["decode"]
    assert law.factor == pytest.approx(0.8) and law.us_per_kernel == pytest.approx(-1.5)
    # Half the kernels (static depth) keep their per-kernel part per kernel.
    assert law.latency_us(np.array([1000.0]), np.array([150]))[0] == pytest.approx(800 - 225)


def test_graph_rows_set_graph_executions_in_model_correction(make_synthetic):
    """A CUDA profile with dense_decoder_graph rows: graph sweeps follow their law, eager ones not."""
    import pandas as pd

    from pis.profiles.schema import op_bytes, op_flops
    from pis.simulator.inmodel.rows import decoder_spec, decoder_sums

    base = make_synthetic("cuda").profile
    sim0 = Simulator(base)
    dims = dict(hidden=4096, ffn=14336, heads=32, kv_heads=8, head_dim=128, layers=2)
    spec = decoder_spec((4096, 14336, 32, 8, 128), 2)
    rows = []
    for b, c in ((1, 512), (8, 2048), (32, 8192)):
        sums = decoder_sums(sim0.estimator, spec, "decode", np.array([b]), np.array([c]), "preallocated",
                            execution="graph")
        rows.append(dict(op="dense_decoder_graph", batch=b, q_len=1, kv_len=c, causal=0, **dims, dtype="bf16",
                         median_us=0.9 * float(sums.op_sum_us[0]) - 0.5 * float(sums.calls[0]), repeats=10,
                         status="ok", backend="test"))
    df = pd.DataFrame(rows)
    df["p10_us"], df["p90_us"] = df["median_us"] * 0.99, df["median_us"] * 1.01
    shape = {c: df[c].to_numpy() for c in ("batch", "q_len", "kv_len", "heads", "kv_heads", "head_dim", "causal",
                                           "hidden", "ffn", "layers")}
    df["flops"], df["bytes"] = op_flops("dense_decoder_graph", shape), op_bytes("dense_decoder_graph", shape, "bf16")
    sim = Simulator(Profile(rows=normalize_rows(pd.concat([base.rows, df], ignore_index=True)), meta=base.meta))
    law = sim.correction.graph_replay(SPEC, "decode")
    assert law.factor == pytest.approx(0.9) and law.us_per_kernel == pytest.approx(-0.5)
    df_graph = sim.predict(method="dense", phase="decode", batch=4, context=4096)
    plain = sim.predict(method="dense", phase="decode", batch=4, context=4096, in_model=False)
    assert df_graph["latency_ms"].iloc[0] < plain["latency_ms"].iloc[0]
    eager = sim.predict(method="dense", phase="decode", batch=4, context=4096,
                        options=PruneOptions(execution="eager"))
    assert eager["in_model_factor"].iloc[0] != df_graph["in_model_factor"].iloc[0]
