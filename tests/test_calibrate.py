"""pis-calibrate: grids, op builders, timers, resumable runs and the CLI contract (CPU; one GPU test)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")

from pis.calibrate import benches, ops  # noqa: E402
from pis.calibrate.cli import main  # noqa: E402
from pis.calibrate.device import datasheet_peaks, resolve_device  # noqa: E402
from pis.calibrate.decoder_points import decoder_points  # noqa: E402
from pis.calibrate.grid import GRID_NAMES, build_grid, count_points, model_pairs  # noqa: E402
from pis.calibrate.runner import RunOptions, calibrate  # noqa: E402
from pis.calibrate.timing import CpuTimer, Timer, TimingConfig, summarize_samples  # noqa: E402
from pis.errors import PisError, Unsupported  # noqa: E402
from pis.profiles.cli import main as profile_main  # noqa: E402
from pis.profiles.schema import (FRAMEWORK_OP, GRAPH_OPS, OPS, REQUIRED_OPS, ROUTED_DECODER_OPS,  # noqa: E402
                                 STATUS_OK, STATUS_SKIPPED_NOISY, WHOLE_DECODER_OPS)
from pis.profiles.store import KEY_COLUMNS, keys_of, load_profile, read_profile, row_key  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--no-progress"])


def grid_keys(name: str, kind: str = "cpu", dtype: str = "fp32") -> set[tuple]:
    return {row_key({"op": p.op, **p.shape_dict, "dtype": dtype}) for p in build_grid(name, kind, dtype).points}


# --- grids ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,dtype", [("cpu", "fp32"), ("cuda", "bf16")])
def test_grid_sizes_grow_and_cover_every_op(kind, dtype):
    counts = count_points(kind, dtype)
    totals = [counts[g]["total"] for g in GRID_NAMES]
    assert totals == sorted(totals) and len(set(totals)) == len(totals), counts
    assert 20 <= counts["tiny"]["total"] <= 80
    routed = set(ROUTED_DECODER_OPS.values())
    for name in GRID_NAMES:
        # Routed decoders: CPU grids beyond quick; framework rows: CPU grids but tiny; graph
        # execution's kernels: CUDA grids (block-sparse attention, which compiles per shape, not tiny).
        if kind == "cpu":
            want = set(OPS) - set(GRAPH_OPS) - {"gemm_fp8"} - ({FRAMEWORK_OP} if name == "tiny" else set())
            want -= routed if name in ("tiny", "quick") else set()
        else:
            want = set(OPS) - routed - {FRAMEWORK_OP} - ({"attn_block_sparse"} if name == "tiny" else set())
        assert want <= set(counts[name]), (name, counts[name])
        assert not (set(OPS) - want) & set(counts[name]), (name, counts[name])
        points = build_grid(name, kind, dtype).points
        assert len(set(points)) == len(points)


def test_framework_rows_are_a_negligible_width_at_several_depths():
    from pis.profiles.schema import op_flops

    points = build_grid("quick", "cpu", "fp32").points
    pts = [p.shape_dict for p in points if p.op == FRAMEWORK_OP]
    assert pts
    width = ("hidden", "ffn", "heads", "kv_heads", "head_dim")
    (dims,) = {tuple(p[c] for c in width) for p in pts}  # one width throughout
    # Negligible: per token and layer, its ops do under 1 % of the dense decoder's work.
    dense = next(p.shape_dict for p in points if p.op == "dense_decoder")
    one = dict(batch=1, q_len=1, kv_len=1, causal=0, layers=1)
    assert op_flops(FRAMEWORK_OP, {**dense, **dict(zip(width, dims)), **one}) < 0.01 * op_flops(
        "dense_decoder", {**dense, **one})
    for causal in (0, 1):  # both phases at several depths: the fit splits per step from per op
        depths = {p["layers"] for p in pts if p["causal"] == causal}
        assert len(depths) >= 2
        # the same points at every depth, so depth alone separates the per-op cost from the step's
        shapes = {d: {(p["batch"], p["q_len"], p["kv_len"]) for p in pts if p["causal"] == causal
                      and p["layers"] == d} for d in depths}
        assert len({frozenset(v) for v in shapes.values()}) == 1


def test_cpu_grids_cover_the_cpu_validation_suite():
    # hidden <= 2048, FFN <= 8192, heads <= 32, head_dim 64/128, batch <= 8, seq <= 512, context <= 2048.
    for name in ("quick", "default"):
        pts = build_grid(name, "cpu", "fp32").points
        by = lambda op, col: {p.shape_dict[col] for p in pts if p.op == op}  # noqa: E731
        assert min(by("gemm", "m")) == 1 and max(by("gemm", "m")) >= 4096
        assert max(by("gemm", "n")) >= 151936 and max(by("gemm", "k")) >= 8192
        assert by("attn_prefill", "head_dim") == {64, 128} == by("attn_decode", "head_dim")
        assert max(by("attn_decode", "kv_len")) >= 2049 and max(by("attn_prefill", "q_len")) >= 512
        assert max(by("attn_decode", "batch")) >= 8 and max(by("attn_decode", "heads")) >= 32
        assert max(by("silu_mul", "numel")) >= 4096 * 8192
        # the (n, k) of a 2048-wide model's projections are measured at decode M
        decode = {(p.shape_dict["n"], p.shape_dict["k"]) for p in pts if p.op == "gemm" and p.shape_dict["m"] == 1}
        assert {(2048, 2048), (8192, 2048), (2048, 8192)} <= decode


def test_gpu_grid_axes():
    # What GPU inference queries: GEMM rows from a batch-1 decode step to 64K-token prefills
    # (densely at decode batch sizes), decode contexts up to Llama 3.1's 128K.
    pts = build_grid("default", "cuda", "bf16").points
    ms = sorted({p.shape_dict["m"] for p in pts if p.op == "gemm"})
    assert ms[0] == 1 and ms[-1] >= 65536 and {1, 2, 4, 8, 16, 32, 48, 64, 96, 128} <= set(ms)
    kv = {p.shape_dict["kv_len"] for p in pts if p.op == "attn_decode"}
    assert min(kv) <= 128 and max(kv) >= 131072
    assert {p.shape_dict["kv_heads"] * 8 == p.shape_dict["heads"] for p in pts if p.op == "attn_decode"} == {True, False}


def test_grid_caps_and_order():
    grid = build_grid("quick", "cpu", "fp32")
    from pis.calibrate.grid import live_bytes
    from pis.profiles.schema import op_flops

    # Whole-decoder points are exempt from the per-op caps (their shapes are chosen by hand).
    capped = [p for p in grid.points if p.shape and p.op not in WHOLE_DECODER_OPS]
    assert all(float(op_flops(p.op, p.shape_dict)) <= grid.params["max_flops"] for p in capped)
    assert all(live_bytes(p.op, p.shape_dict, "fp32") <= grid.params["max_bytes"] for p in capped)
    assert grid.points[0].op == "overhead"
    # The whole-decoder points come before the large-M GEMMs, so a time-budgeted run keeps them.
    ctx = [i for i, p in enumerate(grid.points) if p.op in WHOLE_DECODER_OPS]
    assert len(ctx) == len(decoder_points("quick", "cpu"))
    big = [i for i, p in enumerate(grid.points) if p.op == "gemm" and p.shape_dict["m"] > 512]
    assert big and max(ctx) < min(big)
    first_big = next(i for i, p in enumerate(grid.points) if p.op == "gemm" and p.shape_dict["m"] > 16)
    assert all(p.op == "gemm" for p in grid.points[1:first_big] if p.op.startswith("gemm"))
    assert all(p.shape_dict["m"] <= 16 for p in grid.points[:first_big] if p.op == "gemm")


def test_model_adds_exact_pruned_widths():
    name, pairs, dims = model_pairs("llama-3.1-8b")
    assert (14336, 4096) in pairs and (4096, 14336) in pairs and dims["hidden"] == 4096
    plain = build_grid("quick", "cuda", "bf16")
    with_model = build_grid("quick", "cuda", "bf16", pairs, name)
    extra = set(with_model.points) - set(plain.points)
    assert {(p.shape_dict["n"], p.shape_dict["k"]) for p in extra if p.op == "gemm"} <= set(pairs)
    assert any(p.op == "gemm" and p.shape_dict["m"] == 1 and (p.shape_dict["n"], p.shape_dict["k"]) == (14336, 4096)
               for p in with_model.points)
    assert with_model.params["points_sha256"] != plain.params["points_sha256"]


def test_model_adds_its_attention_heads():
    """The model's GQA ratio and its static-width head counts are measured, not interpolated."""
    name, pairs, dims = model_pairs("benchmarks/cpu-small.json")  # 16 query heads, 4 KV heads
    plain = build_grid("quick", "cpu", "fp32", pairs, name)
    with_model = build_grid("quick", "cpu", "fp32", pairs, name, dims)
    attn = {(p.op, p.shape_dict["heads"], p.shape_dict["kv_heads"], p.shape_dict["head_dim"])
            for p in with_model.points if p.op.startswith("attn")}
    for heads in (16, 12, 8, 4):  # dense and every static-width head count (K/V heads stay 4)
        assert ("attn_decode", heads, 4, 64) in attn and ("attn_prefill", heads, 4, 64) in attn
    assert ("attn_decode", 4, 1, 64) in attn  # dynamic width's per-group attention
    assert not any(p.op.startswith("attn") and p.shape_dict["heads"] == 16 for p in plain.points)
    # Decode batch and context axes include the whole-decoder points'.
    dec = {(p.shape_dict["batch"], p.shape_dict["kv_len"]) for p in with_model.points
           if p.op == "attn_decode" and p.shape_dict["heads"] == 16}
    ctx = {(p.shape_dict["batch"], p.shape_dict["kv_len"]) for p in decoder_points("quick", "cpu", dims)
           if p.op == "dense_decoder" and not p.shape_dict["causal"]}
    assert ctx <= dec
    # Dynamic width's prefill groups: half the queries of a 512-token sequence over all 512 keys.
    assert any(p.op == "attn_prefill" and p.shape_dict["heads"] == 4 and p.shape_dict["kv_heads"] == 1
               and p.shape_dict["q_len"] == 256 and p.shape_dict["kv_len"] == 512 for p in with_model.points)


@pytest.mark.parametrize("name", ["quick", "default"])
def test_cpu_grids_measure_grouped_query_ratio_two(name):
    """Step 20: a CPU profile interpolates grouped-query attention apart from MHA, so the ratio 2
    that static width makes of ratio 4 (8 query heads over 4 K/V heads) has rows of its own."""
    pairs = {(p.op, p.shape_dict["heads"], p.shape_dict["kv_heads"]) for p in build_grid(name, "cpu", "fp32").points
             if p.op.startswith("attn")}
    for op in ("attn_decode", "attn_prefill"):
        assert {(op, 4, 2), (op, 8, 4), (op, 32, 16)} <= pairs
        assert (op, 32, 8) in pairs and (op, 8, 8) in pairs  # ratios 4 and 1 stay


def test_cpu_grids_time_the_hf_decoder_at_a_narrow_ffn_too():
    """Step 19: the dense_decoder points again with a quarter of the FFN (aligned to 64), so the
    in-context model can split the GEMMs' factor from the other ops'; CPU grids only."""
    _, _, dims = model_pairs("benchmarks/cpu-small.json")  # FFN 2816
    pts = [p.shape_dict for p in decoder_points("default", "cpu", dims) if p.op == "dense_decoder"]
    wide = {(s["batch"], s["q_len"], s["kv_len"]) for s in pts if s["ffn"] == 2816}
    narrow = {(s["batch"], s["q_len"], s["kv_len"]) for s in pts if s["ffn"] == 704}  # 2816 / 4 = 11 x 64
    # the same points at both widths, each once, and no third width
    assert narrow and wide == narrow and len(pts) == len(wide) + len(narrow)
    assert all(s["hidden"] == 1024 and s["heads"] == 16 for s in pts)
    for kind, name in (("cuda", "quick"), ("cpu", "tiny")):
        assert len({p.shape_dict["ffn"] for p in decoder_points(name, kind) if p.op == "dense_decoder"}) == 1


def test_routed_top_k_over_few_candidates_is_measured():
    """Routers choose among 4-8 head/FFN groups: the CPU and GPU grids measure top-k there."""
    for kind, dtype in (("cpu", "fp32"), ("cuda", "bf16")):
        for name in ("quick", "default"):
            ns = {p.shape_dict["n"] for p in build_grid(name, kind, dtype).points if p.op == "topk"}
            assert {4, 8} <= ns


# --- ops, timers, device --------------------------------------------------------------------

def test_attention_gqa_matches_repeated_kv():
    b = benches.build("attn_decode", dict(batch=2, q_len=1, kv_len=32, heads=8, kv_heads=2, head_dim=64, causal=0),
                  torch.float32, torch.device("cpu"))
    out = b.fn()
    assert out.shape == (2, 8, 1, 64) and b.backend.startswith("cpu-")
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 8, 1, 64), torch.randn(2, 2, 32, 64), torch.randn(2, 2, 32, 64)
    ref = torch.softmax(q @ k.repeat_interleave(4, 1).transpose(-1, -2) / 8.0, -1) @ v.repeat_interleave(4, 1)
    got = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


#: Ops whose kernels need CUDA (2:4 tensor cores, FlexAttention, CUDA graphs).
CUDA_KERNELS = ("gemm_2to4", "gemm_2to4_graph", "attn_block_sparse", "dense_decoder_graph", "gemm_fp8")


@pytest.mark.parametrize("op", CUDA_KERNELS)
def test_cuda_kernels_are_unsupported_on_cpu_with_a_reason(op):
    shape = {c: 64 for c in OPS[op].columns} | {"causal": 1, "sparsity_pct": 50}
    with pytest.raises(Unsupported, match="CUDA"):
        benches.build(op, shape, torch.float32, torch.device("cpu"))


def test_fill_zeroes_and_kv_write_writes_one_slot():
    fill = benches.build("fill", dict(numel=4096), torch.float32, torch.device("cpu"))
    out = fill.fn()
    assert out.numel() == 4096 and not out.any()
    write = benches.build("kv_write", dict(numel=8 * 128), torch.float32, torch.device("cpu"))
    cache = write.fn()  # rows x slots x head_dim, one slot written
    written = cache.abs().sum(dim=(0, 2)) > 0
    assert cache.shape[0] * cache.shape[2] == 8 * 128 and written.sum() == 1


@pytest.mark.parametrize("op", [o for o in OPS if o not in CUDA_KERNELS + ("fill", "kv_write")])
def test_every_op_builds_and_runs_on_cpu(op):
    shapes = {"gemm": dict(m=3, n=64, k=32), "topk": dict(m=3, n=64, k=5), "gemm_w8": dict(m=3, n=64, k=32),
              "gemm_w4": dict(m=3, n=64, k=256, group_size=128),
              "attn_prefill": dict(batch=1, q_len=8, kv_len=8, heads=4, kv_heads=2, head_dim=64, causal=1),
              "attn_decode": dict(batch=1, q_len=1, kv_len=8, heads=4, kv_heads=1, head_dim=128, causal=0),
              "overhead": {}}
    decoder = dict(batch=1, q_len=1, kv_len=16, heads=4, kv_heads=2, head_dim=64, causal=0, hidden=256,
                   ffn=512, layers=1)
    shapes.update(dense_decoder=decoder, dense_decoder_prealloc=decoder, decoder_framework=decoder)
    shapes.update({routed: dict(decoder, sparsity_pct=50) for routed in ROUTED_DECODER_OPS.values()})
    bench = benches.build(op, shapes.get(op, dict(numel=3 * 4096)), torch.float32, torch.device("cpu"))
    out = bench.fn()
    if op in ROUTED_DECODER_OPS.values():  # one decode step's hidden states, no LM head
        assert out.shape == (1, 1, 256) and torch.isfinite(out).all()
    if op in ("gemm", "gemm_w8", "gemm_w4"):
        assert out.shape == (3, 64)
    elif op == "topk":
        assert out.values.shape == (3, 5)
    elif OPS[op].columns == ("numel",):
        # scatter_add returns the 2x residual; kv_concat appends one 128-wide token row
        assert out.numel() in (3 * 4096, 6 * 4096, 3 * 4096 + 128)
        assert torch.isfinite(out).all() and out.abs().sum() > 0
    if bench.timed is not None:  # whole decoders measure themselves: (median, p10, p90) ms, repeats
        med, p10, p90, n = bench.timed()
        assert 0 < p10 <= med <= p90 and n >= 5


def test_rope_is_hf_rotate_half():
    bench = benches.build("rope", dict(numel=2 * 32 * 128), torch.float64, torch.device("cpu"))
    cells = dict(zip(bench.fn.__code__.co_freevars, (c.cell_contents for c in bench.fn.__closure__)))
    x, cos, sin = cells["x"], cells["cos"], cells["sin"]
    x1, x2 = x[..., :64], x[..., 64:]
    torch.testing.assert_close(bench.fn(), torch.cat((x1 * cos[..., :64] - x2 * sin[..., :64],
                                                      x2 * cos[..., 64:] + x1 * sin[..., 64:]), -1))


def test_cold_weights_continue_where_the_previous_bench_stopped(monkeypatch):
    # Consecutive points of one weight shape must not re-read the weights the previous point
    # just left in the cache (the grid runs M fastest over the same (n, k)).
    monkeypatch.setattr(ops, "CPU_WEIGHT_POOL_BYTES", 1 << 22)
    ops.clear_cache()
    try:
        cpu = torch.device("cpu")
        first = benches.build("gemm", dict(m=2, n=64, k=64), torch.float32, cpu)
        cells = dict(zip(first.fn.__code__.co_freevars, (c.cell_contents for c in first.fn.__closure__)))
        ptrs = [cells["nxt"]().data_ptr() for _ in range(20)]
        nxt = ops._cold_weights(64, 64, torch.float32, cpu)
        later = [nxt().data_ptr() for _ in range(20)]
        assert not set(later) & set(ptrs)
        assert len(set(ptrs + later)) == 40
    finally:
        ops.clear_cache()


def test_2to4_is_unsupported_on_cpu():
    with pytest.raises(Unsupported):
        benches.build("gemm_2to4", dict(m=8, n=256, k=256), torch.bfloat16, torch.device("cpu"))


def test_cpu_timer_measures_a_known_sleep():
    timer = CpuTimer(TimingConfig(target_s=0.03, min_repeats=3, max_repeats=100, warmup=1))
    t = timer.measure(lambda: time.sleep(0.003))
    assert 3000 <= t.p10_us <= t.median_us <= t.p90_us and t.median_us < 30000
    assert 3 <= t.repeats <= 10  # adaptive: ~0.03 s / 3 ms


def test_summarize_samples_percentiles():
    t = summarize_samples([1e-6 * x for x in range(1, 102)])
    assert (t.p10_us, t.median_us, t.p90_us, t.repeats) == pytest.approx((11.0, 51.0, 91.0, 101))


def test_datasheet_peaks():
    assert datasheet_peaks("NVIDIA H100 80GB HBM3").half == 989e12
    assert datasheet_peaks("NVIDIA H100 80GB HBM3").bandwidth == 3.35e12
    assert datasheet_peaks("NVIDIA H100 PCIe").half == 756e12
    assert datasheet_peaks("NVIDIA H200").bandwidth == 4.8e12
    assert datasheet_peaks("NVIDIA A100-SXM4-80GB").bandwidth == 2.039e12
    assert datasheet_peaks("NVIDIA L40S").half == 362e12
    assert datasheet_peaks("Some Future GPU") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_device_without_cuda_is_a_one_line_error():
    with pytest.raises(PisError, match="CUDA is not available"):
        resolve_device("cuda:0")


# --- runs -----------------------------------------------------------------------------------

def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cal") / "tiny.parquet"
    result = run_cli("--device", "cpu", "--grid", "tiny", "--out", out, "--threads", 1)
    assert result.exit_code == 0, result.output
    return out


def test_tiny_run_writes_a_valid_complete_profile(tiny_profile):
    profile = load_profile(tiny_profile, REQUIRED_OPS)
    assert profile.meta["complete"] is True and profile.meta["grid_name"] == "tiny"
    assert profile.meta["device_kind"] == "cpu" and profile.meta["dtype"] == "fp32"
    assert profile.meta["cpu_threads"] == 1
    assert keys_of(profile.rows) == grid_keys("tiny")
    assert not profile.rows.duplicated(subset=list(KEY_COLUMNS)).any()
    ok = profile.ok_rows
    assert (ok["median_us"] > 0).all() and (ok["repeats"] >= 3).all()
    assert set(profile.rows.loc[profile.rows["op"] == "gemm_2to4", "status"]) == {"skipped_unsupported"}
    result = CliRunner().invoke(profile_main, ["validate", str(tiny_profile)])
    assert result.exit_code == 0, result.output


def test_metadata_names_no_host_or_path(tiny_profile):
    meta = read_profile(tiny_profile).meta
    text = json.dumps(meta)
    for secret in {socket.gethostname(), str(Path.home()), str(tiny_profile.parent), os.getcwd()} - {"", "/"}:
        assert secret not in text, secret
    for key in ("device_name", "cpu_model", "torch_version", "timing_method", "created", "tool_version"):
        assert meta.get(key), key


def test_rerun_of_a_complete_profile_is_a_no_op(tiny_profile):
    before = tiny_profile.stat().st_mtime_ns
    result = run_cli("--device", "cpu", "--grid", "tiny", "--out", tiny_profile, "--threads", 1)
    assert result.exit_code == 0 and "already complete" in result.stderr
    assert tiny_profile.stat().st_mtime_ns == before


def test_other_config_refused_unless_force(tiny_profile, tmp_path):
    result = run_cli("--device", "cpu", "--grid", "tiny", "--out", tiny_profile, "--dtype", "bf16", "--threads", 1)
    _assert_one_line_error(result, "another configuration", "--force")
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(tiny_profile.read_bytes())
    result = run_cli("--device", "cpu", "--grid", "tiny", "--out", copy, "--dtype", "bf16", "--force", "--threads", 1)
    assert result.exit_code == 0, result.output
    assert read_profile(copy).meta["dtype"] == "bf16"


@pytest.mark.parametrize("args,needle", [
    (["--device", "tpu:0"], "unknown device"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "cuda"),
    (["--grid", "huge"], "unknown grid"),
    (["--dtype", "int8"], "unknown dtype"),
    (["--threads", "0"], "--threads"),
    (["--time-budget", "-1"], "--time-budget"),
    (["--decoder-passes", "0"], "--decoder-passes"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    _assert_one_line_error(run_cli("--out", tmp_path / "p.parquet", *args), needle)
    assert not (tmp_path / "p.parquet").exists()


def test_bad_output_is_one_line_exit_2(tmp_path):
    _assert_one_line_error(run_cli("--grid", "tiny", "--out", tmp_path / "nope" / "p.parquet"), "does not exist")
    _assert_one_line_error(run_cli("--grid", "tiny", "--out", tmp_path), "is a folder")
    other = tmp_path / "notes.parquet"
    other.write_text("my data")
    _assert_one_line_error(run_cli("--grid", "tiny", "--out", other), "not a readable pis profile", "--force")
    assert other.read_text() == "my data"


def test_time_budget_stops_cleanly_then_resumes(tmp_path):
    out = tmp_path / "budget.parquet"
    msgs: list[str] = []
    opts = dict(out=out, grid="tiny", threads=1, progress=False)
    first = calibrate(RunOptions(**opts, time_budget_min=0.3 / 60, point_delay_s=0.05), echo=msgs.append)
    assert first.status == "time_budget" and 0 < first.measured < first.total
    partial = read_profile(out)
    assert partial.meta["complete"] is False and len(partial.rows) == first.measured
    assert any("rerun the same command to resume" in m for m in msgs)
    second = calibrate(RunOptions(**opts), echo=msgs.append)
    assert second.status == "complete" and second.measured == first.total - first.measured
    assert keys_of(read_profile(out).rows) == grid_keys("tiny")


def test_sigkill_mid_run_then_resume_measures_only_the_rest(tmp_path):
    out = tmp_path / "killed.parquet"
    cmd = [sys.executable, "-m", "pis.calibrate.cli", "--device", "cpu", "--grid", "tiny", "--out", str(out),
           "--threads", "1", "--checkpoint-every", "4", "--point-delay", "0.1", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(read_profile(out).rows) >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = read_profile(out)
    assert partial.meta["complete"] is False
    n_partial = len(partial.rows)
    total = len(grid_keys("tiny"))
    assert 4 <= n_partial < total
    before = partial.rows.set_index(list(KEY_COLUMNS))
    result = run_cli("--device", "cpu", "--grid", "tiny", "--out", out, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert f"resuming {out}: {n_partial} of {total}" in result.stderr
    assert f"{total - n_partial} measured in this run" in result.stderr
    final = load_profile(out)
    assert final.meta["complete"] is True
    assert keys_of(final.rows) == grid_keys("tiny") and len(final.rows) == total
    after = final.rows.set_index(list(KEY_COLUMNS)).loc[before.index]
    # earlier rows were kept, not re-measured: their timings are bit-identical
    assert after["median_us"].equals(before["median_us"]) and after["p90_us"].equals(before["p90_us"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tiny_cuda_run(tmp_path):
    out = tmp_path / "gpu.parquet"
    result = run_cli("--device", "cuda:0", "--grid", "tiny", "--out", out)
    assert result.exit_code == 0, result.output
    profile = load_profile(out, REQUIRED_OPS)
    meta = profile.meta
    assert meta["device_kind"] == "cuda" and meta["dtype"] == "bf16" and meta["sm_count"] > 0
    ok = profile.ok_rows
    assert set(REQUIRED_OPS) <= set(ok["op"])
    if torch.cuda.get_device_capability() >= (8, 0):
        assert (profile.rows.loc[profile.rows["op"] == "gemm_2to4", "status"] == STATUS_OK).any()
    # events exclude the launch: a 1x256x256 GEMM kernel is far below a millisecond
    small = ok[(ok["op"] == "gemm") & (ok["m"] == 1) & (ok["n"] == 256)]
    assert (small["median_us"] < 1000).all()


def test_ctrl_c_saves_what_is_measured(tmp_path):
    out = tmp_path / "interrupted.parquet"
    cmd = [sys.executable, "-m", "pis.calibrate.cli", "--device", "cpu", "--grid", "tiny", "--out", str(out),
           "--threads", "1", "--checkpoint-every", "3", "--point-delay", "0.1", "--no-progress"]
    # A shell that starts jobs with `&` and no job control makes them ignore SIGINT, and Python
    # keeps an inherited "ignore": restore the default so the child gets its KeyboardInterrupt.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and proc.poll() is None and not out.exists():
            time.sleep(0.05)
        time.sleep(0.15)  # mid-chunk: a point or two past the first checkpoint
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command to resume" in err
    partial = read_profile(out)
    assert partial.meta["complete"] is False and 3 <= len(partial.rows) < len(grid_keys("tiny"))


class _CannedTimer(Timer):
    """A timer whose sample batches are given (no clock): tests the repeat policy alone."""

    def __init__(self, batches, **cfg):
        super().__init__(TimingConfig(warmup=0, min_repeats=4, max_repeats=4, **cfg))
        self.batches = list(batches)

    def _estimate(self, fn):
        return 1e-3

    def _samples(self, fn, n):
        return self.batches.pop(0)


def test_wide_spread_is_remeasured_and_the_fastest_median_kept():
    burst = [8e-3, 8e-3, 0.75e-3, 9e-3]      # interference over most repeats
    quiet = [0.74e-3, 0.75e-3, 0.76e-3, 0.75e-3]
    t = _CannedTimer([burst, quiet, burst]).measure(lambda: None)
    assert t.median_us == pytest.approx(750.0, rel=0.02)
    # Both retries wide: the lower median of the three wins.
    t = _CannedTimer([burst, [4e-3, 1e-3, 4e-3, 1e-3], burst]).measure(lambda: None)
    assert t.median_us == pytest.approx(2500.0)
    # No retries configured: the first measurement stands.
    t = _CannedTimer([burst], retries=0).measure(lambda: None)
    assert t.median_us == pytest.approx(8000.0)


def test_recheck_remeasures_a_point_hit_by_interference():
    from types import SimpleNamespace

    from pis.calibrate.runner import _point_row, _recheck
    from pis.calibrate.point import point

    rows = []
    for m in (1, 8, 64):
        r = _point_row(point("gemm", m=m, n=64, k=64), "fp32")
        r.update(median_us=20.0 + m, p10_us=19.0 + m, p90_us=21.0 + m, repeats=5, status="ok", backend="x")
        rows.append(r)
    rows[0].update(median_us=7000.0, p10_us=6900.0, p90_us=7100.0)  # a contended core's slice

    class Fixed(CpuTimer):
        """Every re-measurement takes ``us`` (no clock)."""

        def __init__(self, us):
            super().__init__(TimingConfig(warmup=0, min_repeats=3, max_repeats=3))
            self.us, self.calls = us, 0

        def measure(self, fn, **kw):
            self.calls += 1
            return summarize_samples([self.us * 1e-6] * 3)

    ckpt = SimpleNamespace(new=[dict(r) for r in rows])
    said = []
    timer = Fixed(25.0)
    _recheck(ckpt, "fp32", torch.device("cpu"), timer, said.append)
    assert timer.calls == 1  # only the suspicious point
    assert ckpt.new[0]["median_us"] == pytest.approx(25.0) and ckpt.new[0]["status"] == "ok"
    assert ckpt.new[1]["median_us"] == 28.0  # untouched
    assert "re-measuring 1 point" in said[0]
    # A re-measurement no faster than the first keeps the first.
    ckpt = SimpleNamespace(new=[dict(r) for r in rows])
    _recheck(ckpt, "fp32", torch.device("cpu"), Fixed(8000.0), said.append)
    assert ckpt.new[0]["median_us"] == 7000.0


def test_benches_that_opt_out_of_graphs_are_timed_eagerly(monkeypatch):
    # 2:4 linears pay host work that a CUDA-graph replay would hide: their Bench says graphs=False,
    # and the timer then never prepares a graph, whatever the config asks.
    asked = []

    class Recording(CpuTimer):
        def _prepare(self, fn, graphs):
            asked.append(graphs)
            return fn

    timer = Recording(TimingConfig(cuda_graphs=True, min_repeats=3, max_repeats=3, warmup=1))
    timer.measure(lambda: None)
    timer.measure(lambda: None, graphs=False)
    assert asked == [True, False]
    seen = {}
    monkeypatch.setattr(benches, "build", lambda op, shape, dtype, device: ops.Bench(lambda: None, "fake", graphs=False))
    monkeypatch.setattr(Recording, "measure", lambda self, fn, **kw: seen.update(kw) or summarize_samples([1e-6] * 3))
    from pis.calibrate.point import point
    from pis.calibrate.runner import measure_point

    row = measure_point(point("gemm", m=1, n=8, k=8), "fp32", torch.device("cpu"), timer)
    assert row["status"] == STATUS_OK and seen["graphs"] is False


def test_only_measures_the_named_ops_and_rejects_unknown_ones(tmp_path):
    grid = build_grid("tiny", "cpu", "fp32", only=["host_glue", "overhead"])
    assert [p.op for p in grid.points] == ["overhead", "host_glue"]
    assert grid.params["only"] == ["host_glue", "overhead"]
    assert grid.params["points_sha256"] != build_grid("tiny", "cpu", "fp32").params["points_sha256"]
    out = tmp_path / "glue.parquet"
    result = run_cli("--device", "cpu", "--grid", "tiny", "--only", "host_glue", "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_profile(out).rows
    assert list(rows["op"]) == ["host_glue"] and rows["status"].iloc[0] == STATUS_OK
    assert float(rows["median_us"].iloc[0]) > 0 and math.isfinite(float(rows["median_us"].iloc[0]))
    bad = run_cli("--device", "cpu", "--grid", "tiny", "--only", "gemm,warp_drive", "--out", tmp_path / "x.parquet")
    assert bad.exit_code == 2 and "warp_drive" in bad.output and "Traceback" not in bad.output


def test_every_grid_measures_host_glue_first():
    for name in GRID_NAMES:
        for kind in ("cpu", "cuda"):
            ops_ = [p.op for p in build_grid(name, kind, "fp32" if kind == "cpu" else "bf16").points]
            assert ops_[:2] == ["overhead", "host_glue"]


def test_whole_decoder_points_are_measured_in_passes_spread_over_the_run():
    from pis.calibrate.grid import schedule

    points = build_grid("quick", "cpu", "fp32").points
    assert schedule(points, 1) == [(p, 0) for p in points]
    tasks = schedule(points, 3)
    ctx = [p for p in points if p.op in WHOLE_DECODER_OPS]
    assert len(tasks) == len(points) + 2 * len(ctx)
    for p in points:
        assert sorted(k for q, k in tasks if q == p) == ([0, 1, 2] if p.op in WHOLE_DECODER_OPS else [0])
    # First pass right after the tier-0 scalars, the second in the points' place, the last at the end.
    assert [p.op for p, _ in tasks[:2]] == ["overhead", "host_glue"]
    assert tasks[2:2 + len(ctx)] == [(p, 0) for p in ctx]
    assert tasks[-len(ctx):] == [(p, 2) for p in ctx]
    middle = [i for i, (p, k) in enumerate(tasks) if k == 1]
    assert middle[0] > 2 + len(ctx) and middle[-1] < len(tasks) - len(ctx) - 1


def test_median_pass_keeps_one_measurement_whole():
    from pis.calibrate.runner import median_pass

    def t(med, status="ok"):
        return dict(median_us=med, p10_us=med - 1, p90_us=med + 1, repeats=5, status=status, backend="b")

    row = dict(op="dense_decoder", median_us=1.0)
    assert median_pass(row, [t(30.0), t(10.0), t(20.0)])["median_us"] == 20.0
    got = median_pass(row, [t(30.0), t(10.0)])  # even count: the faster middle one
    assert (got["median_us"], got["p10_us"], got["p90_us"]) == (10.0, 9.0, 11.0) and got["op"] == "dense_decoder"
    skipped = dict(median_us=None, p10_us=None, p90_us=None, repeats=None, status="skipped_oom", backend="oom")
    assert median_pass(row, [skipped, t(40.0)])["median_us"] == 40.0
    assert median_pass(row, [skipped])["status"] == "skipped_oom"


def test_passes_resume_without_repeating_or_losing_one(tmp_path):
    out = tmp_path / "passes.parquet"
    msgs: list[str] = []
    opts = dict(out=out, grid="tiny", threads=1, progress=False, only=("dense_decoder",), decoder_passes=3)
    n = len(build_grid("tiny", "cpu", "fp32", only=["dense_decoder"]).points)
    first = calibrate(RunOptions(**opts, time_budget_min=0.4 / 60, point_delay_s=0.1), echo=msgs.append)
    assert first.status == "time_budget" and 0 < first.measured < 3 * n
    kept = read_profile(out).meta["decoder_passes"]
    second = calibrate(RunOptions(**opts), echo=msgs.append)
    assert second.status == "complete" and first.measured + second.measured == 3 * n
    prof = load_profile(out)
    passes = prof.meta["decoder_passes"]
    # Three passes each, and a fourth where the three disagreed by more than PASS_SPREAD.
    assert len(passes) == n and all(len(v) in (3, 4) for v in passes.values())
    for key, timings in kept.items():  # what the first run measured is kept as it was
        assert passes[key][:len(timings)] == timings
    for r in read_profile(out).rows.to_dict("records"):
        mine = passes[json.dumps(list(row_key(r)))]
        meds = sorted(t["median_us"] for t in mine)
        if len(mine) == 3:
            assert r["median_us"] == meds[1]
        else:
            assert r["status"] == STATUS_SKIPPED_NOISY or r["median_us"] in meds
    assert prof.meta["grid_params"]["decoder_passes"] == 3
    shown = CliRunner().invoke(profile_main, ["info", str(out)])
    assert shown.exit_code == 0 and f"{n} whole-decoder points x 3" in shown.output
    # Rerunning a complete file is a no-op, whatever the passes asked for now.
    again = calibrate(RunOptions(**{**opts, "decoder_passes": 5}), echo=msgs.append)
    assert again.status == "already_complete"


def test_cpu_kv_concat_times_the_copy_into_one_preallocated_tensor():
    # A fresh output over 32 MiB faults in its pages or not depending on what the process freed
    # before; the row must be the copy alone (the simulator adds first-touch cost itself).
    bench = benches.build("kv_concat", dict(numel=4 * 4096), torch.float32, torch.device("cpu"))
    a, b = bench.fn(), bench.fn()
    assert a.data_ptr() == b.data_ptr() and bench.backend.endswith("-out")


# --- anchors: calibration that follows the machine --------------------------------------------

def test_anchors_flag_the_rows_of_a_slow_window_and_measure_them_again(tmp_path, monkeypatch):
    """A fake machine runs 2x slow for a while: the anchors see it, and every row timed in that
    window is timed again once the machine is back at its usual speed."""
    import pis.calibrate.anchors as anchors_mod
    import pis.calibrate.runner as runner_mod

    clock = {"t": 0.0, "slow": (5.0, 12.0)}
    monkeypatch.setattr(anchors_mod, "CHECK_EVERY_S", 1.0)
    monkeypatch.setattr(anchors_mod.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(runner_mod.time, "monotonic", lambda: clock["t"])

    def fake_measure(p, dtype, device, timer, warn=None):
        clock["t"] += 0.5
        slow = clock["slow"][0] <= clock["t"] < clock["slow"][1]
        row = runner_mod._point_row(p, dtype)
        us = 10.0 * (2.0 if slow else 1.0)
        row.update(median_us=us, p10_us=us, p90_us=us, repeats=3, status=STATUS_OK, backend="fake")
        return row

    monkeypatch.setattr(runner_mod, "measure_point", fake_measure)
    out = tmp_path / "anchored.parquet"
    calibrate(RunOptions(out=out, grid="tiny", threads=1, progress=False))
    prof = read_profile(out)
    noise = prof.meta["machine_noise"]
    assert noise["disturbed_checks"] > 0 and noise["remeasured_rows"] > 0
    assert noise["drift_pct"] > 50  # the 2x window
    # Every row the profile keeps was timed at the usual speed.
    ok = prof.rows[prof.rows["status"] == STATUS_OK]
    assert (ok["median_us"] == 10.0).all()


def test_passes_that_keep_disagreeing_leave_their_row_out(tmp_path, monkeypatch):
    import pis.calibrate.runner as runner_mod

    seen: dict = {}

    def fake_measure(p, dtype, device, timer, warn=None):
        seen[p] = seen.get(p, 0) + 1  # every pass of a whole decoder reads 1.5x the one before
        row = runner_mod._point_row(p, dtype)
        us = 10.0 * 1.5 ** seen[p] if p.op in WHOLE_DECODER_OPS else 10.0
        row.update(median_us=us, p10_us=us, p90_us=us, repeats=3, status=STATUS_OK, backend="fake")
        return row

    monkeypatch.setattr(runner_mod, "measure_point", fake_measure)
    out = tmp_path / "noisy.parquet"
    calibrate(RunOptions(out=out, grid="tiny", threads=1, progress=False, decoder_passes=3))
    prof = read_profile(out)
    dec = prof.rows[prof.rows["op"].isin(WHOLE_DECODER_OPS)]
    assert (dec["status"] == "skipped_noisy").all() and len(dec)
    assert prof.meta["machine_noise"]["noisy_decoder_rows"] == len(dec)


def test_one_stalled_check_does_not_make_a_run_drift():
    from pis.calibrate.anchors import Anchors

    checks = [(0, 20.0 * i, 1.0 + 0.01 * (i % 3)) for i in range(60)]
    checks[30] = (0, 600.0, 80.0)  # a check caught in a stall of a second
    a = Anchors(points=[], measure=lambda p: {}, checks=checks)
    s = a.summary()
    assert s["drift_pct"] < 5 and s["noise_pct"] < 5


def test_too_noisy_a_machine_is_one_line_of_warning():
    from pis.calibrate.anchors import too_noisy

    checks = [[0, 20.0 * i, 1.0] for i in range(4)]
    assert too_noisy({"noise_pct": 1.0, "drift_pct": 5.0, "checks": checks}) is None
    line = too_noisy({"noise_pct": 6.0, "drift_pct": 40.0, "checks": checks})
    assert line.startswith("warning:") and "\n" not in line and "8 %" in line
    assert too_noisy({"noise_pct": 6.0, "drift_pct": 40.0, "checks": checks[:2]}) is None  # too short a run


def test_profile_info_shows_the_machine_noise(tmp_path):
    out = tmp_path / "p.parquet"
    calibrate(RunOptions(out=out, grid="tiny", threads=1, progress=False))
    shown = CliRunner().invoke(profile_main, ["info", str(out)])
    assert shown.exit_code == 0 and "anchor checks" in shown.output and "points re-measured" in shown.output
