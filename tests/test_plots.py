"""Figures: lazy matplotlib, deterministic PNG/SVG, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from pis.errors import PisError
from pis.simulator.pareto import STUDY_BANDS_PREFILL, frontier

pytest.importorskip("matplotlib")


def _points() -> pd.DataFrame:
    rows = []
    for m, k in (("dense", 0.0), ("static-depth", 1.5), ("static-width", 0.8)):
        for s in (0.0, 0.25, 0.5):
            sp = 1 + k * s
            rows.append(dict(method=m, sparsity=s, phase="prefill", model="x", batch=1, seq_len=64,
                             context_len=64, speedup=sp, theoretical_speedup=sp * 1.1,
                             quality_loss_pct=0.0 if m == "dense" else 30 * s * (1 + k),
                             t_gemm_ms=5 / sp, t_attention_ms=1.0))
    return pd.DataFrame(rows)


def test_importing_the_cli_does_not_import_matplotlib():
    code = "import sys, pis.simulator.pareto_cli, pis.simulator.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_figures_are_deterministic_png_and_svg(tmp_path):
    from pis.simulator.plots import write_plots

    df = _points()
    a = write_plots(df, frontier(df), tmp_path / "a", STUDY_BANDS_PREFILL)
    b = write_plots(df, frontier(df), tmp_path / "b", STUDY_BANDS_PREFILL)
    assert sorted(p.suffix for p in a) == [".png", ".png", ".svg", ".svg"]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    svg = next(p for p in a if p.name == "pareto_phase-prefill.svg").read_text()
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg
    assert a[0].read_bytes().startswith(b"\x89PNG")


def test_existing_figures_need_force(tmp_path):
    from pis.simulator.plots import write_plots

    df = _points()
    write_plots(df, frontier(df), tmp_path)
    with pytest.raises(PisError, match="exists; pass --force"):
        write_plots(df, frontier(df), tmp_path)
    write_plots(df, frontier(df), tmp_path, force=True)


def test_breakdown_needs_breakdown_columns():
    from pis.simulator.plots import breakdown_figure

    with pytest.raises(PisError, match="breakdown=True"):
        breakdown_figure(_points().drop(columns=["t_gemm_ms", "t_attention_ms"]))
