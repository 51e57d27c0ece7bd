"""benchmarks/tools/results_index.py: the results index's rows, from a report's own provenance
columns where it has them and from its file name where it does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tools" / "results_index.py"

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = "f" * 16 + "e" * 48


@pytest.fixture(scope="module")
def results_index():
    spec = importlib.util.spec_from_file_location("results_index", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results root with one new report (provenance columns) and one old-style report."""
    (tmp_path / "current").mkdir()
    (tmp_path / "archive").mkdir()
    # A new report: two configurations, the provenance repeated on each row.
    pd.DataFrame({"config": ["dense s=0 prefill B=1 S=128", "dense s=0 decode B=1 C=256"],
                  "measured_ms": [10.0, 2.0], "device": ["cpu", "cpu"], "suite": ["full", "full"],
                  "device_name": ["Test CPU", "Test CPU"], "threads": [2, 2],
                  "commit": [COMMIT + "+dirty"] * 2, "profile_sha256": [SHA] * 2}
                 ).to_csv(tmp_path / "current" / "validate_cpu_full_2026-12-01.csv", index=False)
    # An old report: no provenance columns (the name says device, suite and date).
    pd.DataFrame({"config": ["dense s=0 decode B=1 C=512"], "measured_ms": [3.0], "device": ["cuda:0"]}
                 ).to_csv(tmp_path / "archive" / "validate_h100_quick_2026-11-26_fresh_run18.csv", index=False)
    return tmp_path


def test_rows_from_provenance_columns(results_index, results: Path) -> None:
    (row,) = results_index.folder_rows(results / "current")
    assert row == {"file": "`validate_cpu_full_2026-12-01.csv`", "date": "2026-12-01",
                   "device": "Test CPU, 2 threads", "suite": "full", "commit": COMMIT[:12] + "+dirty",
                   "profile sha256": SHA[:16], "what": "full suite, as measured"}


def test_rows_from_the_file_name(results_index, results: Path) -> None:
    (row,) = results_index.folder_rows(results / "archive")
    assert row == {"file": "`validate_h100_quick_2026-11-26_fresh_run18.csv`", "date": "2026-11-26",
                   "device": "h100", "suite": "quick", "commit": "not recorded",
                   "profile sha256": "not recorded", "what": "blind quick suite, run #18, first-touch cost"}


def test_index_has_one_table_per_folder(results_index, results: Path) -> None:
    text = results_index.index_markdown(results)
    current, archive = text.split("## current")[1].split("## archive")
    header = "| file | date | device | suite | commit | profile sha256 | what |"
    assert header in current and header in archive
    assert ("| `validate_cpu_full_2026-12-01.csv` | 2026-12-01 | Test CPU, 2 threads | full | "
            f"{COMMIT[:12]}+dirty | {SHA[:16]} | full suite, as measured |") in current
    assert ("| `validate_h100_quick_2026-11-26_fresh_run18.csv` | 2026-11-26 | h100 | quick | not recorded | "
            "not recorded | blind quick suite, run #18, first-touch cost |") in archive


def test_empty_folder_says_so(results_index, tmp_path: Path) -> None:
    (tmp_path / "current").mkdir()
    assert "## current\n\nNo reports yet." in results_index.index_markdown(tmp_path)
