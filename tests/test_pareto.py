"""Pareto frontier and quality bands on hand-made design points."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pis.simulator.pareto import STUDY_BANDS_PREFILL, bands, compare_with_study, frontier


def _points(rows, **scenario) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["method", "sparsity", "speedup", "quality_loss_pct"])
    for k, v in scenario.items():
        df[k] = v
    return df


HAND = _points([
    ("dense", 0.0, 1.0, 0.0),
    ("a", 0.1, 1.2, 2.0),
    ("a", 0.2, 1.5, 6.0),
    ("a", 0.3, 1.6, 10.0),   # dominated by b 0.2 (1.7 at 8 %)
    ("b", 0.1, 1.1, 1.0),
    ("b", 0.2, 1.7, 8.0),
    ("b", 0.3, 2.0, 20.0),
    ("c", 0.1, 1.2, 2.0),    # ties a 0.1 exactly: a wins by name
    ("c", 0.2, 1.5, 7.0),    # same speedup as a 0.2, more loss: dominated
    ("d", 0.1, 0.9, 0.0),    # slower than dense at the same loss
    ("e", 0.5, np.nan, 1.0), # no speedup: ignored
    ("f", 0.5, 3.0, np.nan), # out of quality range: ignored
], phase="prefill")


def _brute_force(df: pd.DataFrame) -> set[tuple[str, float]]:
    ok = df.dropna(subset=["speedup", "quality_loss_pct"])
    keep = set()
    for i, p in ok.iterrows():
        dominated = any((q.speedup >= p.speedup and q.quality_loss_pct <= p.quality_loss_pct)
                        and (q.speedup > p.speedup or q.quality_loss_pct < p.quality_loss_pct)
                        for j, q in ok.iterrows() if j != i)
        if not dominated:
            keep.add((p.method, p.sparsity, p.speedup, p.quality_loss_pct))
    return keep


def test_frontier_excludes_dominated_points_and_breaks_ties_by_name():
    f = frontier(HAND)
    got = list(zip(f["method"], f["sparsity"]))
    assert got == [("dense", 0.0), ("b", 0.1), ("a", 0.1), ("a", 0.2), ("b", 0.2), ("b", 0.3)]
    assert list(f.columns) == list(HAND.columns)


def test_frontier_prefers_dense_on_exact_ties_and_is_order_independent():
    df = _points([("static-depth", 0.0, 1.0, 0.0), ("dense", 0.0, 1.0, 0.0),
                  ("static-depth", 0.25, 1.3, 5.0)])
    for perm in itertools.permutations(range(len(df))):
        f = frontier(df.iloc[list(perm)])
        assert f["method"].tolist() == ["dense", "static-depth"]
    shuffled = frontier(HAND.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(shuffled, frontier(HAND))


def test_frontier_is_per_scenario():
    two = pd.concat([HAND, _points([("dense", 0.0, 1.0, 0.0), ("a", 0.3, 5.0, 10.0)], phase="decode")])
    f = frontier(two)
    assert f[f["phase"] == "decode"]["method"].tolist() == ["dense", "a"]
    assert len(f[f["phase"] == "prefill"]) == 6


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0.5, 3.0), st.floats(0, 30)),
                min_size=1, max_size=25))
def test_frontier_matches_brute_force(rows):
    df = _points([(m, i / 100, round(x, 2), round(y, 1)) for i, (m, x, y) in enumerate(rows)])
    f = frontier(df)
    got = set(zip(f["method"], f["sparsity"], f["speedup"], f["quality_loss_pct"]))
    want = _brute_force(df)
    # Exact duplicates are all non-dominated; the frontier keeps one of each value.
    assert {g[2:] for g in got} == {w[2:] for w in want}
    assert got <= want
    assert np.all(np.diff(f["quality_loss_pct"]) > 0) and np.all(np.diff(f["speedup"]) > 0)


def test_bands_step_function_and_merge():
    b = bands(HAND)
    assert b["family"].tolist() == ["dense", "b", "a", "b"]
    assert b["loss_from"].tolist() == [0.0, 1.0, 2.0, 8.0]
    assert b["loss_to"].tolist() == [1.0, 2.0, 8.0, np.inf]
    assert b["best_speedup"].tolist() == [1.0, 1.1, 1.5, 2.0]  # a's band ends at a 0.2 (1.5)
    assert b["best_sparsity"].tolist() == [0.0, 0.1, 0.2, 0.3]
    assert (b["phase"] == "prefill").all()


def test_bands_match_argmax_of_per_family_best_speedup():
    # Brute force: at each allowed loss, the family whose best point within budget is fastest.
    ok = HAND.dropna(subset=["speedup", "quality_loss_pct"])
    b = bands(HAND)
    for L in np.linspace(0, 25, 251):
        within = ok[ok["quality_loss_pct"] <= L]
        best = within.groupby("method")["speedup"].max()
        winner_speed = best.max()
        band = b[(b["loss_from"] <= L) & (L < b["loss_to"])].iloc[0]
        assert best[band["family"]] == pytest.approx(winner_speed)


def test_compare_with_study():
    found = pd.DataFrame({"family": ["dense", "static-depth", "dynamic-depth", "static-width"],
                          "loss_from": [0.0, 0.5, 6.0, 20.0], "loss_to": [0.5, 6.0, 20.0, np.inf],
                          "best_speedup": 1.0, "best_sparsity": 0.0})
    # A study table of its own (the shipped STUDY_BANDS_PREFILL may be revised).
    study = pd.DataFrame({"family": ["static-depth", "dynamic-depth", "static-width"],
                          "loss_from": [0.0, 5.0, 17.0], "loss_to": [4.0, 16.0, 26.0]})
    c = compare_with_study(found, study)
    assert c["study_family"].tolist() == ["static-depth", "dynamic-depth", "static-width"]
    assert c["agreement"].tolist() == pytest.approx([3.5 / 4, 10 / 11, 6 / 9])
    assert c["simulated"].iloc[0] == "dense [0-0.5]; static-depth [0.5-4]"


# ---- pis-pareto end to end on the synthetic profile ----------------------------------------

import io  # noqa: E402
import json  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from pis.simulator.pareto_cli import main as pareto_main  # noqa: E402


def _run(args):
    return CliRunner().invoke(pareto_main, args, catch_exceptions=False)


@pytest.mark.parametrize("text, message", [
    ("method,sparsity\nstatic-depth,0.1\n", "missing column(s) quality_loss_pct"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,x,1\n", "is not a finite number"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,1.5,1\n", "outside [0, 1)"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,0.1,1\nstatic-depth,0.1,2\n", "duplicate point"),
    ("method,sparsity,quality_loss_pct\nwizardry,0.1,1\n", "unknown method 'wizardry'"),
])
def test_cli_bad_quality_file_exits_2_with_one_line(tmp_path, synthetic_file, text, message):
    q = tmp_path / "q.csv"
    q.write_text(text)
    r = _run(["--profile", synthetic_file, "--quality", str(q)])
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and r.output.startswith("error: ") and message in r.output


def test_cli_family_without_quality_data_is_an_error(synthetic_file):
    r = _run(["--profile", synthetic_file, "--method", "unstructured"])
    assert r.exit_code == 2 and "no quality data for unstructured" in r.output


def test_cli_json_frontier_bands_and_ranges(tmp_path, synthetic_file):
    q = tmp_path / "q.csv"
    q.write_text("method,sparsity,quality_loss_pct\nstatic-depth,0.25,5\nstatic-depth,0.5,20\n"
                 "semi-structured,0.5,4\nstatic-width,0.3,3\n")
    r = _run(["--profile", synthetic_file, "--quality", str(q), "--allow-roofline",
              "--method", "static-depth,semi-structured,static-width,low-rank", "--format", "json",
              "--seq-len", "256"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["no_quality_data"] == ["low-rank"]
    pts = pd.DataFrame(d["points"])
    assert set(pts["method"]) == {"dense", "static-depth", "semi-structured", "static-width"}
    assert (pts["method"] == "dense").sum() == 1
    assert pts.loc[pts["method"] == "semi-structured", "sparsity"].max() == pytest.approx(0.5)
    beyond = pts[(pts["method"] == "static-depth") & (pts["sparsity"] > 0.5)]
    assert len(beyond) and (beyond["quality_flag"] == "out of quality range").all()
    assert beyond["quality_loss_pct"].isna().all() and not beyond["on_frontier"].any()
    # The CLI's frontier is exactly the non-dominated set of the points it printed.
    want = frontier(pts)
    front = pd.DataFrame(d["frontier"])
    assert list(zip(front["method"], front["sparsity"])) == list(zip(want["method"], want["sparsity"]))
    assert pts["on_frontier"].sum() == len(front)
    b = pd.DataFrame(d["bands"])
    assert b["loss_from"].iloc[0] == 0.0 and d["bands"][-1]["loss_to"] is None  # open last band
    assert [r["study_family"] for r in d["study_comparison"]] == STUDY_BANDS_PREFILL["family"].tolist()


def test_cli_table_plots_and_no_overwrite(tmp_path, synthetic_file):
    out, figs = tmp_path / "front.txt", tmp_path / "figs"
    args = ["--profile", synthetic_file, "--allow-roofline", "--sparsity", "0,0.2,0.4",
            "--out", str(out), "--plot", str(figs)]
    r = _run(args)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "Pareto frontier" in text and "Study bands" in text and "static-depth" in text
    assert sorted(p.name for p in figs.iterdir()) == [
        "breakdown_phase-prefill.png", "breakdown_phase-prefill.svg",
        "pareto_phase-prefill.png", "pareto_phase-prefill.svg"]
    before = {p.name: p.read_bytes() for p in figs.iterdir()}
    r = _run(args)
    assert r.exit_code == 2 and "exists; pass --force" in r.output
    r = _run(args + ["--force"])
    assert r.exit_code == 0
    assert {p.name: p.read_bytes() for p in figs.iterdir()} == before  # deterministic figures


def test_cli_all_skips_2to4_on_profiles_without_it(synthetic_file):
    r = _run(["--profile", synthetic_file, "--sparsity", "0,0.3", "--format", "csv"])
    assert r.exit_code == 0, r.output
    assert "semi-structured skipped" in r.stderr
    assert "semi-structured" not in set(pd.read_csv(io.StringIO(r.stdout))["method"])
