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
    c = compare_with_study(found, STUDY_BANDS_PREFILL)
    assert c["study_family"].tolist() == ["static-depth", "dynamic-depth", "static-width"]
    assert c["agreement"].tolist() == pytest.approx([3.5 / 4, 10 / 11, 6 / 9])
    assert c["simulated"].iloc[0] == "dense [0-0.5]; static-depth [0.5-4]"
