"""`pis-profile`: info, validate, diff, merge, loo; every user error is one line and exit 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pis.profiles.cli import main
from pis.profiles.store import Profile, read_profile, write_profile


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and the reason named."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for frag in fragments:
        assert frag in lines[0], lines[0]


def variant(profile: Profile, path: Path, edit=None, **meta) -> str:
    """Write a copy of ``profile`` with rows changed by ``edit(df)`` and metadata overrides."""
    rows = profile.rows.copy()
    if edit is not None:
        rows = edit(rows)
    write_profile(Profile(rows=rows, meta={**profile.meta, **meta}), path)
    return str(path)


def _gemm(rows: pd.DataFrame) -> pd.Series:
    return rows["op"] == "gemm"


# --- validate ---------------------------------------------------------------------------------

def test_validate_ok(synthetic_file):
    result = run("validate", synthetic_file)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: ") and "gemm" in result.stdout


def test_validate_truncated_file(synthetic_file, tmp_path):
    data = Path(synthetic_file).read_bytes()
    bad = tmp_path / "truncated.parquet"
    bad.write_bytes(data[: len(data) // 2])
    assert_user_error(run("validate", bad), "truncated")


def test_validate_non_parquet_and_missing_files(tmp_path):
    text = tmp_path / "notes.parquet"
    text.write_text("op,m,n,k\ngemm,1,2,3\n")
    assert_user_error(run("validate", text), "not a readable Parquet")
    assert_user_error(run("validate", tmp_path / "nope.parquet"), "does not exist")
    assert_user_error(run("validate", tmp_path), "folder")


def test_validate_foreign_parquet(tmp_path):
    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), path)
    assert_user_error(run("validate", path), "not a pis profile")


def test_validate_newer_schema_version(synthetic, tmp_path):
    path = variant(synthetic.profile, tmp_path / "v99.parquet", schema_version=99)
    assert_user_error(run("validate", path), "v99", "newer")


@pytest.mark.parametrize("edit,reason", [
    (lambda r: r.assign(median_us=np.where(_gemm(r) & (r["m"] == 1), np.nan, r["median_us"])), "NaN"),
    (lambda r: r.assign(median_us=np.where(_gemm(r) & (r["m"] == 2), -1.0, r["median_us"])), "non-positive"),
    (lambda r: pd.concat([r, r[_gemm(r)].head(3)], ignore_index=True), "3 duplicate rows"),
    (lambda r: r[r["op"] != "rope"], "rope"),
])
def test_validate_bad_rows(synthetic, tmp_path, edit, reason):
    path = variant(synthetic.profile, tmp_path / "bad.parquet", edit)
    assert_user_error(run("validate", path), "not a valid profile", reason)


def test_validate_require_extra_op(synthetic_file):
    assert_user_error(run("validate", synthetic_file, "--require", "gemm_2to4"), "gemm_2to4")


def test_validate_reports_every_problem_on_one_line(synthetic, tmp_path):
    path = variant(synthetic.profile, tmp_path / "bad.parquet",
                   lambda r: r[~r["op"].isin(["rope", "gather"])].assign(median_us=-r["median_us"]))
    result = run("validate", path)
    assert_user_error(result, "non-positive", "rope", "gather")


# --- info ---------------------------------------------------------------------------------------

def test_info_table_and_json(synthetic_file):
    table = run("info", synthetic_file)
    assert table.exit_code == 0, table.output
    assert "synthetic-cpu" in table.stdout and "gemm_2to4" in table.stdout
    js = run("info", synthetic_file, "--format", "json")
    assert js.exit_code == 0
    doc = json.loads(js.stdout)
    cov = {c["op"]: c for c in doc["coverage"]}
    assert cov["gemm"]["measured"] == 13 * 7 * 7 and cov["gemm"]["skipped"] == 0
    assert cov["gemm"]["shape_ranges"]["n"] == {"min": 256, "max": 16384, "values": 7}
    assert cov["gemm_2to4"] == {**cov["gemm_2to4"], "measured": 0, "skipped": 1,
                                "skipped_by_status": {"skipped_unsupported": 1}}
    assert doc["meta"]["device_name"] == "synthetic-cpu" and doc["problems"] == []


def test_info_bad_file_is_one_line(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1garbage")
    assert_user_error(run("info", path))


# --- diff ---------------------------------------------------------------------------------------

def test_diff_of_scaled_copy_gives_the_scale(make_synthetic, synthetic_file, tmp_path):
    scaled = tmp_path / "slow.parquet"
    write_profile(make_synthetic(scale=1.25).profile, scaled)
    result = run("diff", synthetic_file, scaled, "--format", "json")
    assert result.exit_code == 0, result.output
    ops = {o["op"]: o for o in json.loads(result.stdout)["ops"]}
    for name in ("gemm", "attn_decode", "rmsnorm", "all"):
        assert ops[name]["median_ratio"] == pytest.approx(1.25)
        assert ops[name]["p10_ratio"] == pytest.approx(1.25) and ops[name]["p90_ratio"] == pytest.approx(1.25)
    assert ops["gemm"]["common"] == 637 and ops["all"]["only_a"] == ops["all"]["only_b"] == 0
    csv = run("diff", synthetic_file, scaled, "--format", "csv")
    df = pd.read_csv(io.StringIO(csv.stdout))
    assert set(df["op"]) >= {"gemm", "all"}
    table = run("diff", synthetic_file, scaled)
    assert table.exit_code == 0 and "1.250" in table.stdout and "only in A" in table.stdout


def test_diff_counts_points_only_one_side_has(synthetic, synthetic_file, tmp_path):
    fewer = variant(synthetic.profile, tmp_path / "fewer.parquet", lambda r: r[~(_gemm(r) & (r["m"] == 1))])
    ops = {o["op"]: o for o in json.loads(run("diff", synthetic_file, fewer, "--format", "json").stdout)["ops"]}
    assert ops["gemm"]["common"] == 12 * 49 and ops["gemm"]["only_a"] == 49 and ops["gemm"]["only_b"] == 0
    assert ops["gemm"]["median_ratio"] == pytest.approx(1.0)


# --- merge --------------------------------------------------------------------------------------

def test_merge_resolves_conflicts_by_repeats_then_spread(synthetic, tmp_path):
    prof = synthetic.profile

    def b_edit(r: pd.DataFrame) -> pd.DataFrame:
        r = r.copy()
        g = _gemm(r)
        r.loc[g, ["median_us", "p10_us", "p90_us"]] *= 2.0          # B's values are recognizable
        r.loc[g & (r["m"] == 1), "repeats"] = 50                       # B wins: more repeats
        r.loc[g & (r["m"] == 2), "repeats"] = 10                       # A wins: more repeats
        tie = g & (r["m"] == 4)                                        # equal repeats, B tighter
        r.loc[tie, "p10_us"], r.loc[tie, "p90_us"] = r.loc[tie, "median_us"], r.loc[tie, "median_us"]
        extra = r[g & (r["m"] == 1)].head(1).assign(m=3)               # (3, 256, 256): only B has it
        return pd.concat([r, extra], ignore_index=True)

    a = variant(prof, tmp_path / "a.parquet")
    b = variant(prof, tmp_path / "b.parquet", b_edit, grid_name="other-grid")
    out = tmp_path / "merged.parquet"
    result = run("merge", a, b, "-o", out)
    assert result.exit_code == 0, result.output
    merged = read_profile(out)
    rows = merged.rows[_gemm(merged.rows)].set_index(["m", "n", "k"])
    orig = prof.rows[_gemm(prof.rows)].set_index(["m", "n", "k"])["median_us"]
    np.testing.assert_allclose(rows.loc[(1, 4096, 4096), "median_us"], 2 * orig.loc[(1, 4096, 4096)])
    np.testing.assert_allclose(rows.loc[(2, 4096, 4096), "median_us"], orig.loc[(2, 4096, 4096)])
    np.testing.assert_allclose(rows.loc[(4, 4096, 4096), "median_us"], 2 * orig.loc[(4, 4096, 4096)])
    # equal repeats, B's p90 - p10 spread is twice A's: A wins
    np.testing.assert_allclose(rows.loc[(64, 4096, 4096), "median_us"], orig.loc[(64, 4096, 4096)])
    assert (3, 256, 256) in rows.index
    assert len(merged.rows) == len(prof.rows) + 1
    sources = merged.meta["merged_from"]
    assert [s["file"] for s in sources] == ["a.parquet", "b.parquet"]
    assert merged.meta["grid_name"] == "synthetic-test+other-grid"
    assert run("validate", out).exit_code == 0


def test_merge_prefer_b_takes_every_point_b_measured(synthetic, tmp_path):
    prof = synthetic.profile

    def b_edit(r: pd.DataFrame) -> pd.DataFrame:
        r = r[_gemm(r) & (r["m"] <= 2)].copy()
        r[["median_us", "p10_us", "p90_us"]] *= 3.0
        r["repeats"] = 1  # fewer repeats: without --prefer, A would win
        return r

    a = variant(prof, tmp_path / "a.parquet")
    b = variant(prof, tmp_path / "b.parquet", b_edit)
    out = tmp_path / "merged.parquet"
    result = run("merge", a, b, "-o", out, "--prefer", "b")
    assert result.exit_code == 0, result.output
    rows = read_profile(out).rows
    g = _gemm(rows)
    orig = prof.rows[_gemm(prof.rows)].set_index(["m", "n", "k"])["median_us"]
    got = rows[g].set_index(["m", "n", "k"])["median_us"]
    small = got.index.get_level_values("m") <= 2
    np.testing.assert_allclose(got[small], 3.0 * orig.loc[got[small].index])
    np.testing.assert_allclose(got[~small], orig.loc[got[~small].index])
    assert len(rows) == len(prof.rows)
    plain = tmp_path / "plain.parquet"
    assert run("merge", a, b, "-o", plain).exit_code == 0
    np.testing.assert_allclose(read_profile(plain).rows.set_index(["op", "m", "n", "k"]).loc["gemm"]
                               .loc[got[small].index, "median_us"], orig.loc[got[small].index])


def test_merge_writes_the_current_schema_version(synthetic, tmp_path):
    # An older profile merged with rows of a newer op (say v3's routed decoders) holds that op:
    # the file is this tool's, in this schema's columns, so it says this schema's version.
    from pis.profiles.schema import SCHEMA_VERSION

    a = variant(synthetic.profile, tmp_path / "a.parquet", schema_version=2)
    b = variant(synthetic.profile, tmp_path / "b.parquet", lambda r: r[_gemm(r)].head(3))
    out = tmp_path / "m.parquet"
    result = run("merge", a, b, "-o", out)
    assert result.exit_code == 0, result.output
    merged = read_profile(out)
    assert merged.meta["schema_version"] == SCHEMA_VERSION
    assert "schema_version" not in merged.meta.get("notes", "")


def test_merge_refuses_different_devices_unless_forced(synthetic, tmp_path):
    a = variant(synthetic.profile, tmp_path / "a.parquet")
    b = variant(synthetic.profile, tmp_path / "b.parquet", device_name="NVIDIA H100")
    out = tmp_path / "m.parquet"
    assert_user_error(run("merge", a, b, "-o", out), "device_name", "--force")
    assert not out.exists()
    c = variant(synthetic.profile, tmp_path / "c.parquet", dtype="fp16")
    assert_user_error(run("merge", a, c, "-o", out), "dtype")
    forced = run("merge", a, b, "-o", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert "device_name" in read_profile(out).meta["notes"]


def test_merge_never_overwrites_without_force(synthetic_file, tmp_path):
    out = tmp_path / "existing.parquet"
    out.write_bytes(b"precious")
    assert_user_error(run("merge", synthetic_file, synthetic_file, "-o", out), "exists", "--force")
    assert out.read_bytes() == b"precious"
    assert run("merge", synthetic_file, synthetic_file, "-o", out, "--force").exit_code == 0
    assert len(read_profile(out).rows) == len(read_profile(synthetic_file).rows)


def test_merge_rejects_invalid_input(synthetic, synthetic_file, tmp_path):
    bad = variant(synthetic.profile, tmp_path / "bad.parquet",
                  lambda r: r.assign(median_us=np.where(_gemm(r), np.nan, r["median_us"])))
    assert_user_error(run("merge", synthetic_file, bad, "-o", tmp_path / "m.parquet"), "NaN")


# --- loo ----------------------------------------------------------------------------------------

def test_loo_summary(synthetic_file):
    result = run("loo", synthetic_file, "--worst", "3")
    assert result.exit_code == 0, result.output
    assert "n=637" in result.stdout and "median |err|" in result.stdout
    doc = json.loads(run("loo", synthetic_file, "--format", "json", "--worst", "2").stdout)
    assert doc["summary"]["n"] == 637 and len(doc["worst"]) == 2 and doc["tile_align"] is False
    assert doc["worst"][0]["abs_pct"] >= doc["worst"][1]["abs_pct"]


def test_loo_user_errors(synthetic_file):
    assert_user_error(run("loo", synthetic_file, "--op", "gemm_2to4"), "gemm_2to4")
    assert_user_error(run("loo", synthetic_file, "--by", "heads"), "heads")
    assert_user_error(run("loo", synthetic_file, "--op", "attn_decode", "--by", "heads,numel"), "numel")


def test_suspicious_rows_find_a_small_shape_slower_than_a_larger_one(synthetic):
    from pis.profiles.store import suspicious_rows

    rows = synthetic.profile.rows.copy()
    assert suspicious_rows(rows) == []  # the analytic truth grows with size
    gemm = rows.index[(rows["op"] == "gemm") & (rows["m"] == 1) & (rows["n"] == 256) & (rows["k"] == 256)][0]
    norm = rows.index[(rows["op"] == "rmsnorm") & (rows["numel"] == 4096)][0]
    rows.loc[gemm, "median_us"] = 7000.0  # the ~7 ms scheduler slice of a contended core
    rows.loc[norm, "median_us"] *= 50
    assert suspicious_rows(rows) == sorted([int(gemm), int(norm)])


def test_validate_warns_about_suspicious_rows(synthetic, tmp_path):
    rows = synthetic.profile.rows.copy()
    i = rows.index[(rows["op"] == "gemm") & (rows["m"] == 1)][0]
    rows.loc[i, ["median_us", "p10_us", "p90_us"]] = [7000.0, 6900.0, 7100.0]
    path = tmp_path / "slow.parquet"
    write_profile(Profile(rows, synthetic.profile.meta), path)
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 0 and "1 measured row(s) are over 3x slower" in res.output


def test_info_marks_a_profile_older_than_this_pis(synthetic, tmp_path):
    from pis.profiles.cli import staleness
    from pis.profiles.store import Profile

    assert staleness(synthetic.profile) is None  # written at the current schema
    old = Profile(rows=synthetic.profile.rows, meta={**synthetic.profile.meta, "schema_version": 2})
    line = staleness(old)
    assert line.startswith("stale: schema v2") and "gemm_w8" in line and "\n" not in line
    assert "gemm_fp8" not in line  # a CUDA-only op is no gap in a CPU profile


def test_written_profiles_are_readable_under_the_umask(synthetic, tmp_path):
    """A profile is written through a private temporary file; the result gets the usual mode."""
    import os
    path = tmp_path / "p.parquet"
    old = os.umask(0o022)
    try:
        write_profile(synthetic.profile, path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
