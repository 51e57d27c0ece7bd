"""Regenerate ``benchmarks/results/INDEX.md``: one table per results folder (current, archive).

Each CSV under a folder (subfolders included) is one row: file, date, device, suite, commit,
profile sha256 and a few words on what it is. Reports from ``pis-validate run`` carry their
provenance in columns (``suite``, ``device_name``, ``threads``, ``commit``, ``profile_sha256``),
and the row takes it from there. For older files it comes from the file name,
``<kind>_<device>_<suite>_<YYYY-MM-DD>[_<what>].csv`` (device ``cpu``, ``h100``, ``h200``;
suite ``quick`` or ``full``): the commit and the profile's sha256 were not recorded then.
The words in the "what" column come from the name's ``<what>`` suffix (:data:`SUFFIXES`).

    python benchmarks/tools/results_index.py             # print the index
    python benchmarks/tools/results_index.py --write     # write benchmarks/results/INDEX.md
    python benchmarks/tools/results_index.py --check     # exit 1 when INDEX.md is out of date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

#: The results folders, one table each, in this order.
FOLDERS: tuple[str, ...] = ("current", "archive")
#: The results root this script indexes by default.
RESULTS = Path(__file__).resolve().parents[1] / "results"
NOT_RECORDED = "not recorded"
COLUMNS: tuple[str, ...] = ("file", "date", "device", "suite", "commit", "profile sha256", "what")
#: Device names a file name may carry, and suites.
DEVICES: tuple[str, ...] = ("cpu", "h100", "h200")
SUITES: tuple[str, ...] = ("tiny", "quick", "full")
#: Hex digits shown of a commit and of a profile's sha256.
COMMIT_DIGITS, SHA_DIGITS = 12, 16
#: Provenance columns that ``pis-validate run`` writes into its reports.
PROVENANCE: tuple[str, ...] = ("suite", "device_name", "threads", "commit", "profile_sha256", "device")

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

#: What a validation report's name suffix says, first match wins: (pattern, words); ``{suite}``
#: is the suite and ``{n}`` the run number the pattern captured. Run numbers are those of
#: docs/history.md.
SUFFIXES: tuple[tuple[str, str], ...] = (
    (r"", "{suite} suite, as measured"),
    (r"a", "{suite} suite, another report of the same session"),
    (r"b", "{suite} suite, run B (calibration with the end-of-run recheck)"),
    (r"r3", "{suite} suite, three rounds"),
    (r"r3b", "{suite} suite, three rounds on a fresh calibration"),
    (r"r3b_glue", "the r3b {suite} suite rescored with loop glue priced"),
    (r"routed", "{suite} suite, run #1, routed decoders' own factors"),
    (r"routed_run(?P<n>\d+)", "{suite} suite, run #{n}, routed decoders' own factors"),
    (r"routed_framework", "{suite} suite, run #1, rescored with framework rows"),
    (r"routed_run(?P<n>\d+)_framework", "{suite} suite, run #{n}, rescored with framework rows"),
    (r"routed_without", "{suite} suite, run #1, rescored without the routed rows"),
    (r"framework_run(?P<n>\d+)", "{suite} suite, run #{n}, framework cost priced"),
    (r"head_run(?P<n>\d+)", "blind {suite} suite, run #{n}, LM head unscaled"),
    (r"passes_run(?P<n>\d+)", "blind {suite} suite, run #{n}, three decoder passes"),
    (r"split_run(?P<n>\d+)", "blind {suite} suite, run #{n}, GEMMs and other ops apart"),
    (r"shipped_run(?P<n>\d+)", "blind {suite} suite, run #{n}, on the shipped cpu-2core"),
    (r"fresh_run(?P<n>\d+)", "blind {suite} suite, run #{n}, first-touch cost"),
    (r"hostmodel", "{suite} suite rescored with the host-issue model"),
    (r"run(?P<n>\d+)", "{suite} suite, repeat run #{n} (repeat/README.md)"),
)

#: Outputs of the scripts in benchmarks/experiments/, by name prefix: (words, device, suite) for
#: what their files do not record; the words get the rest of the name before the date (the
#: family of a family map) and any suffix after it.
EXPERIMENTS: dict[str, tuple[str, str | None, str | None]] = {
    "drift_tracking": ("drift probe against six quick suites (experiments/drift_tracking.py)", "cpu", "quick"),
    "family_map": ("family map over sparsity, batch and length (experiments/family_map.py)", "cpu", None),
}
#: Words for an experiment file's suffix.
EXPERIMENT_SUFFIXES: dict[str, str] = {"routed": "with the routed decoders' own factors"}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _values(df: pd.DataFrame, column: str, shorten: Callable[[str], str] = str) -> str | None:
    """The distinct recorded values of ``column`` in order, joined; None when absent or empty."""
    if column not in df:
        return None
    seen: list[str] = []
    for v in df[column].dropna().astype(str).str.strip():
        if v and v.lower() != "nan" and shorten(v) not in seen:
            seen.append(shorten(v))
    return ", ".join(seen) if seen else None


def _short_commit(sha: str) -> str:
    base, dirty = (sha[:-6], "+dirty") if sha.endswith("+dirty") else (sha, "")
    return base[:COMMIT_DIGITS] + dirty if re.fullmatch(r"[0-9a-f]{7,40}", base) else sha


def _short_sha(sha: str) -> str:
    return sha[:SHA_DIGITS] if re.fullmatch(r"[0-9a-f]{64}", sha) else sha


def _read_provenance(path: Path) -> pd.DataFrame:
    """The provenance columns a CSV has (an empty frame for files pandas cannot read)."""
    try:
        return pd.read_csv(path, usecols=lambda c: c in PROVENANCE, dtype=str)
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return pd.DataFrame()


def _what_validate(suite: str, suffix: str) -> str:
    for pattern, words in SUFFIXES:
        m = re.fullmatch(pattern, suffix)
        if m:
            return words.format(suite=suite, n=m.groupdict().get("n", ""))
    return f"{suite} suite, {suffix.replace('_', ' ')}"


def describe(path: Path, folder: Path) -> dict[str, str]:
    """One index row for the CSV at ``path`` under ``folder``."""
    stem = path.stem
    m = _DATE.search(stem)
    date = m.group(0) if m else "not in name"
    head, suffix = (stem[:m.start()].rstrip("_"), stem[m.end():].lstrip("_")) if m else (stem, "")
    tokens = head.split("_")
    name_device = next((t for t in tokens if t in DEVICES), None)
    name_suite = next((t for t in tokens if t in SUITES), None)
    if not m and name_suite is not None:  # no date: what follows the suite is the suffix
        i = tokens.index(name_suite)
        tokens, suffix = tokens[:i + 1], "_".join(tokens[i + 1:])
    prov = _read_provenance(path)

    experiment = next((k for k in EXPERIMENTS if head == k or head.startswith(k + "_")), None)
    exp_words, exp_device, exp_suite = EXPERIMENTS.get(experiment, ("", None, None)) if experiment else ("", None, None)

    device_name = _values(prov, "device_name")
    if device_name is not None:
        threads = _values(prov, "threads")
        device = device_name + (f", {threads} threads" if threads else "")
    else:
        kind = _values(prov, "device", lambda v: v.split(":")[0])
        device = name_device or kind or exp_device or NOT_RECORDED
    suite = _values(prov, "suite") or name_suite or exp_suite or "–"

    if experiment:
        detail = head[len(experiment):].strip("_").replace("_", " ")
        what = (f"{detail} " if detail else "") + exp_words
        if suffix:
            what += ", " + EXPERIMENT_SUFFIXES.get(suffix, suffix.replace("_", " "))
    elif tokens[0] == "validate":
        what = _what_validate(suite, suffix)
    else:
        what = stem.replace("_", " ")
    return {
        "file": f"`{path.relative_to(folder).as_posix()}`",
        "date": date,
        "device": device,
        "suite": suite,
        "commit": _values(prov, "commit", _short_commit) or NOT_RECORDED,
        "profile sha256": _values(prov, "profile_sha256", _short_sha) or NOT_RECORDED,
        "what": what,
    }


def _natural(path: Path, folder: Path) -> tuple:
    """Sort key: the folder's own files before its subfolders', then by name, numbers by value
    (x9 before x10)."""
    rel = path.relative_to(folder)
    return (len(rel.parts), [(0, int(t), "") if t.isdigit() else (1, 0, t)
                             for t in re.split(r"(\d+)", rel.as_posix()) if t])


def folder_rows(folder: Path) -> list[dict[str, str]]:
    """The rows of every CSV under ``folder``: its own files first, then each subfolder's, by name."""
    if not folder.is_dir():
        return []
    paths = sorted(folder.rglob("*.csv"), key=lambda p: _natural(p, folder))
    return [describe(p, folder) for p in paths]


def table(rows: list[dict[str, str]]) -> str:
    """``rows`` as a markdown table (a line saying so when there are none)."""
    if not rows:
        return "No reports yet."
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


HEADER = """# Results index

Generated from the folders' contents by `python benchmarks/tools/results_index.py --write`: change
the files or the script, not this page.

- `current/`: reports of the current code. `pis-validate run` writes its provenance into each
  report (suite, device name, threads, commit, profile sha256), and this index reads it from there.
- `archive/`: reports and experiment outputs of earlier code, kept as measured (several were
  rescored later; `docs/history.md` tells their story, with the run numbers used here). Their
  commit and profile were not recorded.

Date, device and suite come from the file name where the file does not record them;
`<kind>_<device>_<suite>_<YYYY-MM-DD>[_<what>].csv` names a report. Commits show
{commit} hex digits, profile sha256s {sha}.
"""


def index_markdown(root: Path = RESULTS) -> str:
    """The whole INDEX.md for the results folder ``root``."""
    parts = [HEADER.format(commit=COMMIT_DIGITS, sha=SHA_DIGITS)]
    for name in FOLDERS:
        parts.append(f"## {name}\n\n{table(folder_rows(root / name))}\n")
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=RESULTS, help="the results folder (default: %(default)s)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write ROOT/INDEX.md instead of printing it")
    mode.add_argument("--check", action="store_true", help="exit 1 when ROOT/INDEX.md differs from the output")
    args = ap.parse_args()
    text = index_markdown(args.root)
    target = args.root / "INDEX.md"
    if args.write:
        target.write_text(text)
        print(f"wrote {target}", file=sys.stderr)
    elif args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date: run {Path(__file__).name} --write", file=sys.stderr)
            sys.exit(1)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
