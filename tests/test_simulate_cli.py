"""`pis-simulate`: output formats, the JSON contract, bad input, files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from pis.simulator.cli import main

JSON_KEYS = {"model", "method", "sparsity", "phase", "batch", "seq_len", "context_len", "latency_ms",
             "dense_latency_ms", "speedup", "theoretical_speedup", "flops", "bytes", "extrapolated"}


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_json_has_the_promised_keys(synthetic_file) -> None:
    r = run("--profile", synthetic_file, "--method", "static-depth,static-width", "--sparsity", "0,0.5",
            "--phase", "prefill,decode", "--batch", "1,8", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 2 * 2 * 2 * 2
    for row in rows:
        assert JSON_KEYS <= set(row)
        assert isinstance(row["extrapolated"], bool)
    half = [x for x in rows if x["method"] == "static-depth" and x["sparsity"] == 0.5]
    assert all(1.5 < x["speedup"] < 2.5 for x in half)


def test_outputs_are_deterministic_and_jobs_do_not_change_them(synthetic_file, tmp_path) -> None:
    args = ["--profile", synthetic_file, "--sparsity", "0.1,0.3", "--batch", "2", "--format", "csv",
            "--allow-roofline"]
    a, b = run(*args), run(*args, "--jobs", "2")
    assert a.exit_code == 0 and b.exit_code == 0
    assert a.stdout == b.stdout


def test_breakdown_and_parquet_out(synthetic_file, tmp_path) -> None:
    out = tmp_path / "r.parquet"
    r = run("--profile", synthetic_file, "--method", "dynamic-depth", "--sparsity", "0.5", "--phase",
            "prefill", "--breakdown", "--format", "parquet", "--out", str(out))
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    assert {"t_gemm_ms", "t_attention_ms", "t_routing_ms"} <= set(df.columns)
    r = run("--profile", synthetic_file, "--format", "parquet", "--out", str(out))
    assert r.exit_code == 2 and "exists" in r.output and "--force" in r.output


@pytest.mark.parametrize("args,needle", [
    (["--model", "gpt-17"], "unknown model"),
    (["--method", "magic"], "unknown method"),
    (["--sparsity", "1.2"], "sparsity"),
    (["--sparsity", "abc"], "sparsity"),
    (["--method", "static-depth", "--sparsity", "0.99"], "removes all"),
    (["--batch", "0"], "batch"),
    (["--phase", "train"], "phase"),
    (["--method", "semi-structured", "--sparsity", "0.25"], "gemm_2to4"),
    (["--profile", "/nonexistent/p.parquet"], "p.parquet"),
])
def test_bad_input_is_one_line_exit_2(synthetic_file, args, needle) -> None:
    full = args if args[0] == "--profile" else ["--profile", synthetic_file, *args]
    r = run(*full)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.output
    assert "Traceback" not in r.output


def test_corrupt_profile_is_one_line(tmp_path) -> None:
    p = tmp_path / "bad.parquet"
    p.write_bytes(b"PAR1 not really")
    r = run("--profile", str(p))
    assert r.exit_code == 2 and r.output.count("\n") == 1


def test_layer_sparsity_file(synthetic_file, tmp_path) -> None:
    f = tmp_path / "layers.txt"
    f.write_text("# keep even layers\n" + "\n".join("0" if i % 2 == 0 else "1" for i in range(32)))
    r = run("--profile", synthetic_file, "--method", "static-depth", "--layer-sparsity", str(f),
            "--phase", "decode", "--format", "json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)[0]
    assert row["sparsity"] == 0.5 and 1.6 < row["speedup"] < 2.2


def test_help_lists_families() -> None:
    r = run("--help")
    assert r.exit_code == 0 and "dynamic-width" in r.output and "theoretical" in r.output
