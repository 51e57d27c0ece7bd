"""Reading, writing and checking profile files.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``), so a profile on
disk is always either the old complete file or the new complete file, even after SIGKILL.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pis.errors import ProfileError
from pis.profiles.schema import (
    COLUMNS, META_PREFIX, META_RENAMED, META_REQUIRED, OPS, SCHEMA_VERSION, SHAPE_COLUMNS, STATUS_OK,
    SHAPE_COLUMNS_SINCE_V2, SHAPE_COLUMNS_SINCE_V3, STATUSES, TIMING_COLUMNS,
)

#: Columns that identify a measured point: two rows with equal keys are duplicates.
KEY_COLUMNS: tuple[str, ...] = ("op",) + SHAPE_COLUMNS + ("dtype",)

_INT_COLUMNS = SHAPE_COLUMNS + ("repeats",)
_FLOAT_COLUMNS = ("median_us", "p10_us", "p90_us", "flops", "bytes")
_STR_COLUMNS = ("op", "dtype", "status", "backend")


@dataclass
class Profile:
    """A latency profile: the measured rows plus provenance metadata."""

    rows: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_rows(self) -> pd.DataFrame:
        """Rows that hold a measurement (not skipped)."""
        return self.rows[self.rows["status"] == STATUS_OK]

    def ops(self) -> list[str]:
        """Op kinds with at least one measured row."""
        return sorted(self.ok_rows["op"].unique().tolist())


def empty_rows() -> pd.DataFrame:
    """An empty row table with the profile's columns and dtypes."""
    return normalize_rows(pd.DataFrame({c: [] for c in COLUMNS}))


def normalize_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with exactly the profile columns, in order, with canonical dtypes."""
    df = df.copy()
    for col in COLUMNS:
        if col not in df.columns:
            df[col] = None
    df = df[list(COLUMNS)]
    for col in _INT_COLUMNS:
        df[col] = pd.array(pd.to_numeric(df[col], errors="raise"), dtype="Int64")
    for col in _FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="raise").astype("float64")
    for col in _STR_COLUMNS:
        df[col] = df[col].astype("string")
    return df.reset_index(drop=True)


def row_key(row: dict[str, Any] | pd.Series) -> tuple:
    """Hashable identity of a measured point (op, shape, dtype); nulls become None."""
    out = []
    for col in KEY_COLUMNS:
        v = row.get(col) if isinstance(row, dict) else row[col]
        out.append(None if v is None or (not isinstance(v, str) and pd.isna(v)) else
                   (v if isinstance(v, str) else int(v)))
    return tuple(out)


def keys_of(df: pd.DataFrame) -> set[tuple]:
    """Set of row keys in a row table."""
    return {row_key(r) for r in df[list(KEY_COLUMNS)].to_dict("records")}


def encode_meta(meta: dict[str, Any]) -> dict[bytes, bytes]:
    """Parquet key-value metadata: ``pis.<key>`` -> JSON value."""
    return {f"{META_PREFIX}{k}".encode(): json.dumps(v, sort_keys=True).encode()
            for k, v in meta.items()}


def decode_meta(raw: dict[bytes, bytes] | None) -> dict[str, Any]:
    """Inverse of :func:`encode_meta`; foreign keys (pandas, arrow) are ignored."""
    meta: dict[str, Any] = {}
    for k, v in (raw or {}).items():
        key = k.decode(errors="replace")
        if key.startswith(META_PREFIX):
            try:
                meta[key[len(META_PREFIX):]] = json.loads(v.decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ProfileError(f"metadata key {key!r} is not valid JSON ({err})") from None
    return meta


def _table(profile: Profile) -> pa.Table:
    rows = normalize_rows(profile.rows)
    meta = dict(profile.meta)
    meta.setdefault("schema_version", SCHEMA_VERSION)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **encode_meta(meta)})


def write_profile_to(profile: Profile, sink: Any) -> None:
    """Write ``profile`` as Parquet to an open binary file or buffer."""
    pq.write_table(_table(profile), sink, compression="zstd")


def write_profile(profile: Profile, path: str | os.PathLike[str]) -> None:
    """Write ``profile`` to ``path`` atomically (never leaves a half-written file)."""
    path = Path(path)
    table = _table(profile)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ProfileError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ProfileError(f"cannot write {path}: folder {folder} is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh, compression="zstd")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_profile(path: str | os.PathLike[str]) -> Profile:
    """Read a profile, raising :class:`ProfileError` with one clear reason on any problem.

    Checks: the file exists and is Parquet, carries pis metadata, a schema version this
    tool reads, and the profile columns.
    """
    path = Path(path)
    if not path.exists():
        raise ProfileError(f"profile {path} does not exist")
    if path.is_dir():
        raise ProfileError(f"profile {path} is a folder, not a file")
    try:
        pf = pq.ParquetFile(path)
        table = pf.read()
    except (pa.ArrowInvalid, pa.ArrowException, OSError, ValueError) as err:
        raise ProfileError(f"{path} is not a readable Parquet profile (corrupted or truncated?): "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    meta = decode_meta(table.schema.metadata)
    for old, new in META_RENAMED.items():
        if old in meta:
            meta.setdefault(new, meta.pop(old))
    if "schema_version" not in meta:
        raise ProfileError(f"{path} is a Parquet file but not a pis profile (no pis.schema_version metadata)")
    version = meta["schema_version"]
    if not isinstance(version, int):
        raise ProfileError(f"{path}: schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise ProfileError(f"{path} uses profile schema v{version}, newer than this tool reads "
                           f"(v{SCHEMA_VERSION}); upgrade pruninginfersim")
    # Older files predate later shape columns; they read as null (no older op uses them).
    optional = (SHAPE_COLUMNS_SINCE_V2 if version < 2 else ()) + (SHAPE_COLUMNS_SINCE_V3 if version < 3 else ())
    missing = [c for c in COLUMNS if c not in table.column_names and c not in optional]
    if missing:
        raise ProfileError(f"{path} lacks profile columns: {', '.join(missing)}")
    try:
        rows = normalize_rows(table.to_pandas())
    except (ValueError, TypeError) as err:
        raise ProfileError(f"{path}: a column has the wrong type ({err})") from None
    return Profile(rows=rows, meta=meta)


def check_profile(profile: Profile, required_ops: Iterable[str] = ()) -> list[str]:
    """Return every problem found in a profile (empty list when valid)."""
    problems: list[str] = []
    rows, meta = profile.rows, profile.meta
    for key in META_REQUIRED:
        if key not in meta:
            problems.append(f"metadata key {key!r} missing")
    unknown = sorted(set(rows["op"].dropna().unique()) - set(OPS))
    if unknown:
        problems.append(f"unknown ops: {', '.join(unknown)}")
    if rows["op"].isna().any():
        problems.append(f"{int(rows['op'].isna().sum())} rows without an op")
    bad_status = sorted(set(rows["status"].dropna().unique()) - set(STATUSES))
    if bad_status or rows["status"].isna().any():
        problems.append(f"invalid status values: {bad_status or ['<null>']}")
    ok = rows[rows["status"] == STATUS_OK]
    for col in TIMING_COLUMNS:
        vals = ok[col].astype("float64")
        if vals.isna().any():
            problems.append(f"{int(vals.isna().sum())} measured rows have NaN/null {col}")
        if (vals < 0).any() or (col == "median_us" and (vals <= 0).any()):
            problems.append(f"{int((vals <= 0).sum())} measured rows have non-positive {col}")
    if len(ok):
        med, p10, p90 = (ok[c].astype("float64") for c in ("median_us", "p10_us", "p90_us"))
        if ((p10 > med * 1.000001) | (med > p90 * 1.000001)).any():
            problems.append("some rows violate p10 <= median <= p90")
    for name, op in OPS.items():
        sub = rows[rows["op"] == name]
        for col in op.columns:
            if len(sub) and sub[col].isna().any():
                problems.append(f"{name}: {int(sub[col].isna().sum())} rows lack shape column {col}")
        shape_vals = sub[[c for c in op.columns]].astype("float64").to_numpy() if op.columns else None
        if shape_vals is not None and len(sub) and (np.nan_to_num(shape_vals, nan=1) < 0).any():
            problems.append(f"{name}: negative shape values")
    dup = rows.duplicated(subset=list(KEY_COLUMNS)).sum()
    if dup:
        problems.append(f"{int(dup)} duplicate rows (same op, shape and dtype)")
    have = set(ok["op"].unique())
    lacking = [op for op in required_ops if op not in have]
    if lacking:
        problems.append(f"no measured rows for ops a simulation needs: {', '.join(lacking)}")
    return problems


def require_valid(profile: Profile, path: str | os.PathLike[str], required_ops: Iterable[str] = ()) -> None:
    """Raise :class:`ProfileError` with the first problems when a profile is invalid."""
    problems = check_profile(profile, required_ops)
    if problems:
        more = f" (+{len(problems) - 2} more)" if len(problems) > 2 else ""
        raise ProfileError(f"{path} is not a valid profile: {'; '.join(problems[:2])}{more}")


def load_profile(path: str | os.PathLike[str], required_ops: Iterable[str] = ()) -> Profile:
    """Read and validate a profile in one step."""
    profile = read_profile(path)
    require_valid(profile, path, required_ops)
    return profile


def suspicious_rows(rows: pd.DataFrame, factor: float = 3.0) -> list[int]:
    """Positions of measured rows more than ``factor`` × slower than a larger shape of their op.

    Work only grows with M (a GEMM of the same N, K) and with numel (a memory-bound op), so a
    row slower than a bigger one was hit by interference that outlasted its retries: another
    process holding a core makes every parallel region wait a scheduler slice (~7 ms here).
    """
    out: list[int] = []
    ok = rows[(rows["status"] == STATUS_OK) & rows["median_us"].notna()]
    groups = [(g, "m") for _, g in ok[ok["op"] == "gemm"].groupby(["n", "k"])]
    groups += [(g, "numel") for op, g in ok.groupby("op") if OPS[str(op)].columns == ("numel",)]
    for g, axis in groups:
        g = g.sort_values(axis)
        t = g["median_us"].to_numpy(dtype=float)
        # fastest time among strictly larger shapes, for every row
        later_min = np.minimum.accumulate(t[::-1])[::-1]
        later_min = np.append(later_min[1:], np.inf)
        out += [int(i) for i, bad in zip(g.index, t > factor * later_min) if bad]
    return sorted(out)
