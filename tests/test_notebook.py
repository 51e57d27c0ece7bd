"""The analysis notebook runs end to end, headless, and reports what it promises.

Its run on the shipped default profile is a test of that profile's data:
tests/shipped/test_shipped_notebook.py.
"""

from __future__ import annotations

import pytest

from conftest import NOTEBOOK


def test_notebook_uses_only_the_public_api():
    nbformat = pytest.importorskip("nbformat")
    code = "\n".join(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")
    imports = [line.strip() for line in code.splitlines() if line.strip().startswith(("import ", "from "))]
    assert "import pis" in imports
    assert not [line for line in imports if "pis." in line], "the notebook imports pis internals"


def test_notebook_on_synthetic_profile(run_notebook, synthetic_file):
    text = run_notebook(synthetic_file)
    assert "WARNING: synthetic profile" in text
    for phase in ("prefill", "decode"):
        assert f"--- {phase}: Pareto frontier" in text and f"{phase}: " in text
    assert "agreement with the study's prefill bands" in text
    # Regimes follow from the synthetic device: decode batch 1 below its ridge, big prefill above.
    assert "memory-bound" in text and "compute-bound" in text
