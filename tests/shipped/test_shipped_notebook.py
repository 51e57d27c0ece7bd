"""Shipped profiles' data: the analysis notebook's default run (no ``PIS_PROFILE``) uses the
embedded default profile, a measured one that a recalibration may change.

The notebook's behaviour on a known profile is tested on the synthetic one in
tests/test_notebook.py.
"""

from __future__ import annotations

import pytest

from pis.profiles.shipped import shipped_profiles


@pytest.mark.skipif(not shipped_profiles(), reason="no profile shipped yet")
def test_notebook_on_default_profile(run_notebook):
    text = run_notebook(None)
    assert "agreement with the study's prefill bands" in text
