"""The analysis notebook runs end to end, headless, and reports what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from pis.profiles.shipped import shipped_profiles

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "pareto_analysis.ipynb"


def _execute(monkeypatch, profile: str | None) -> str:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    if profile is None:
        monkeypatch.delenv("PIS_PROFILE", raising=False)
    else:
        monkeypatch.setenv("PIS_PROFILE", profile)
    monkeypatch.delenv("PIS_QUALITY", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error"
            text.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


def test_notebook_uses_only_the_public_api():
    nbformat = pytest.importorskip("nbformat")
    code = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    imports = [line.strip() for line in code.splitlines() if line.strip().startswith(("import ", "from "))]
    assert "import pis" in imports
    assert not [line for line in imports if "pis." in line], "the notebook imports pis internals"


def test_notebook_on_synthetic_profile(monkeypatch, synthetic_file):
    text = _execute(monkeypatch, synthetic_file)
    assert "WARNING: synthetic profile" in text
    for phase in ("prefill", "decode"):
        assert f"--- {phase}: Pareto frontier" in text and f"{phase}: " in text
    assert "agreement with the study's prefill bands" in text
    # Regimes follow from the synthetic device: decode batch 1 below its ridge, big prefill above.
    assert "memory-bound" in text and "compute-bound" in text


@pytest.mark.skipif(not shipped_profiles(), reason="no profile shipped yet")
def test_notebook_on_default_profile(monkeypatch):
    text = _execute(monkeypatch, None)
    assert "agreement with the study's prefill bands" in text
