"""Quality tables: the shipped default, its build, loading, validation and interpolation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pis.errors import PisError
from pis.simulator import quality_build
from pis.simulator.quality import (FLAG_NO_DATA, FLAG_OUT_OF_RANGE, default_path, from_frame,
                                   load_quality)

KNOWN = ("dense", "static-depth", "dynamic-depth", "static-width", "static-width-hidden",
         "semi-structured", "unstructured", "low-rank", "sparse-attention", "dynamic-width")


def _write(tmp_path, text: str) -> str:
    p = tmp_path / "q.csv"
    p.write_text(text)
    return str(p)


def test_default_table_is_the_build_of_the_published_rows(tmp_path):
    # The shipped files must be exactly what the documented rules produce.
    assert quality_build.main(["--check"]) == 0
    data = default_path().parent
    table, _ = quality_build.build(data / quality_build.INPUT, quant_path=data / quality_build.QUANT_INPUT)
    shipped = pd.read_csv(default_path())
    cols = ["method", "weights", "sparsity", "quality_loss_pct"]
    pd.testing.assert_frame_equal(shipped[cols], table[cols], check_exact=False, atol=1e-3)


def test_default_table_is_monotone_and_leaves_out_families_without_data():
    shipped = pd.read_csv(default_path())
    for _, g in shipped.groupby(["method", "weights"]):
        assert np.all(np.diff(g.sort_values("sparsity")["quality_loss_pct"]) >= 0)
    assert (shipped["quality_loss_pct"] >= 0).all()
    q = load_quality(known=KNOWN)
    for fam in ("unstructured", "sparse-attention", "dynamic-width"):
        assert not q.has(fam)
    assert q.has("static-depth") and q.has("dense")


def test_build_rules_median_layers_and_retrained():
    pub = pd.DataFrame({
        "method": ["A", "B", "C", "D", "E", "F"],
        "family": ["static_depth"] * 4 + ["2:4_semi_structured", "dynamic_sublayer(MLP)"],
        "model": "m",
        "sparsity_def": ["param % removed (8/32 layers)", "layers", "layers", "layers",
                         "fraction of linear weights", "x"],
        "sparsity": ["21.7", "24.6", "25.4", "25", "50", "speedup 1.2x"],
        "avg_acc": [90.0, 80.0, 70.0, 10.0, 50.0, 50.0],
        "dense_avg": 100.0, "rel_loss_pct": 0.0,
        "finetuned": ["no", "no", "not stated", "yes (LoRA)", "no", "no"],
        "tasks": "t", "src": ["S1", "S2", "S3", "S4", "S5", "S6"], "verif": "D1",
    })
    mapped = quality_build.map_rows(pub)
    assert mapped.loc[0, "sparsity_bin"] == pytest.approx(0.25)  # 8/32 layers, not 21.7 %
    assert mapped.loc[3, "excluded"] == "backbone retrained"
    assert mapped.loc[5, "excluded"] == "no matching CLI family"
    table = quality_build.build_table(mapped)
    depth = table[table["method"] == "static-depth"].iloc[0]
    assert depth["median_loss_pct"] == pytest.approx(20.0)  # median of 10, 20, 30
    assert depth["n_rows"] == 3 and depth["sources"] == "S1;S2;S3"
    with_retrained = quality_build.build_table(quality_build.map_rows(pub, include_retrained=True))
    assert with_retrained.iloc[-1]["n_rows"] == 4


def test_build_makes_each_family_monotone():
    pub = pd.DataFrame({
        "method": list("ABC"), "family": "static_width", "model": "m", "sparsity_def": "params",
        "sparsity": [20, 30, 40], "avg_acc": [80.0, 90.0, 60.0], "dense_avg": 100.0,
        "rel_loss_pct": 0.0, "finetuned": "no", "tasks": "t", "src": "S", "verif": "D1"})
    table = quality_build.build_table(quality_build.map_rows(pub))
    assert table["quality_loss_pct"].tolist() == pytest.approx([15.0, 15.0, 40.0])
    assert table["median_loss_pct"].tolist() == pytest.approx([20.0, 10.0, 40.0])


def test_interpolation_is_monotone_anchored_and_never_extrapolates():
    q = from_frame(pd.DataFrame({"method": ["static-depth"] * 3, "sparsity": [0.1, 0.3, 0.5],
                                 "quality_loss_pct": [2.0, 10.0, 30.0]}), known=KNOWN)
    s = np.linspace(0, 0.5, 101)
    loss = q.loss("static-depth", s)
    assert loss[0] == 0.0 and np.all(np.diff(loss) >= -1e-12)
    assert q.loss("static-depth", [0.1, 0.3])[1] == pytest.approx(10.0)
    assert np.isnan(q.loss("static-depth", 0.55)).all()
    assert q.loss("dense", [0.0, 0.7]).tolist() == [0.0, 0.0]
    assert np.isnan(q.loss("low-rank", 0.1)).all()


def test_annotate_flags_out_of_range_and_missing_families():
    q = from_frame(pd.DataFrame({"method": ["static-depth"], "sparsity": [0.25],
                                 "quality_loss_pct": [5.0]}), known=KNOWN)
    df = pd.DataFrame({"method": ["dense", "static-depth", "static-depth", "unstructured"],
                       "sparsity": [0.5, 0.2, 0.5, 0.2]})
    out = q.annotate(df)
    assert out["quality_flag"].tolist() == ["", "", FLAG_OUT_OF_RANGE, FLAG_NO_DATA]
    assert out["quality_loss_pct"].iloc[0] == 0.0 and 0 < out["quality_loss_pct"].iloc[1] < 5


@pytest.mark.parametrize("text, message", [
    ("method,sparsity\nstatic-depth,0.1\n", "missing column(s) quality_loss_pct"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,abc,1\n", "line 2: sparsity 'abc' is not a finite number"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,0.1,\n", "quality_loss_pct"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,1.0,5\n", "outside [0, 1)"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,-0.1,5\n", "outside [0, 1)"),
    ("method,sparsity,quality_loss_pct\nstatic-depth,0.1,1\nstatic-depth,0.10,2\n", "line 3: duplicate point"),
    ("method,sparsity,quality_loss_pct\nmagic,0.1,1\n", "unknown method 'magic'"),
    ("method,sparsity,quality_loss_pct\ndense,0,3\n", "dense must have"),
    ("method,sparsity,quality_loss_pct\n", "no rows"),
    ("", "is empty"),
])
def test_bad_quality_files_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(PisError) as err:
        load_quality(_write(tmp_path, text), known=KNOWN)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_quality_file(tmp_path):
    with pytest.raises(PisError, match="does not exist"):
        load_quality(tmp_path / "nope.csv", known=KNOWN)


def test_user_table_with_extra_columns_and_spaces(tmp_path):
    q = load_quality(_write(tmp_path, "method, sparsity, quality_loss_pct, note\n"
                                      "low-rank, 0.2, 4, mine\nlow-rank, 0.4, 9, mine\n"), known=KNOWN)
    assert q.methods() == ("dense", "low-rank")
    assert q.max_sparsity("low-rank") == pytest.approx(0.4)
    assert q.loss("low-rank", 0.2)[0] == pytest.approx(4.0)
