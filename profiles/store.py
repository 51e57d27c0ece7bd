"""Reading, writing and checking profile files.

Writes are atomic (temporary file in the same folder, fsync, ``os.replace``), so a profile on
disk is always either the old complete file or the new complete file, even after SIGKILL.
Reading and checking a profile need no pandas (a simulation's start-up stays fast); the rows
become a DataFrame on first use of :attr:`Profile.rows`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pis.errors import ProfileError
from pis.profiles.schema import (
    COLUMNS, META_PREFIX, META_RENAMED, META_REQUIRED, OPS, SCHEMA_VERSION, SHAPE_COLUMNS, STATUS_OK,
    SHAPE_COLUMNS_SINCE_V2, SHAPE_COLUMNS_SINCE_V3, SHAPE_COLUMNS_SINCE_V6, STATUSES, TIMING_COLUMNS,
)

#: Columns that identify a measured point: two rows with equal keys are duplicates.
KEY_COLUMNS: tuple[str, ...] = ("op",) + SHAPE_COLUMNS + ("dtype",)

_INT_COLUMNS = SHAPE_COLUMNS + ("repeats",)
_FLOAT_COLUMNS = ("median_us", "p10_us", "p90_us", "flops", "bytes")
_STR_COLUMNS = ("op", "dtype", "status", "backend")

if TYPE_CHECKING:
    import pandas as pd


class Profile:
    """A latency profile: the measured rows plus provenance metadata.

    The rows are given as a DataFrame, or as the Arrow table a file holds (``table``); each
    form is made from the other on first use. :meth:`columns` gives them as numpy arrays.
    """

    def __init__(self, rows: "pd.DataFrame | None" = None, meta: dict[str, Any] | None = None, *,
                 table: pa.Table | None = None) -> None:
        if rows is None and table is None:
            raise ValueError("a profile needs rows or a table")
        self._rows = rows
        self._table = table
        self._columns: dict[str, np.ndarray] | None = None
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def rows(self) -> "pd.DataFrame":
        """Every row, with the profile's columns and dtypes (:func:`normalize_rows`)."""
        if self._rows is None:
            self._rows = normalize_rows(self._table.to_pandas())
        return self._rows

    @property
    def ok_rows(self) -> "pd.DataFrame":
        """Rows that hold a measurement (not skipped)."""
        return self.rows[self.rows["status"] == STATUS_OK]

    def columns(self) -> dict[str, np.ndarray]:
        """Every profile column as a numpy array: numbers as float64 (NaN for null), text as an
        object array (None for null). Built once."""
        if self._columns is None:
            if self._rows is not None:
                df = normalize_rows(self._rows)
                self._columns = {c: (df[c].to_numpy(dtype=object, na_value=None) if c in _STR_COLUMNS
                                     else df[c].to_numpy(dtype=np.float64, na_value=np.nan)) for c in COLUMNS}
            else:
                self._columns = _table_columns(self._table)
        return self._columns

    def ops(self) -> list[str]:
        """Op kinds with at least one measured row."""
        c = self.columns()
        return sorted({str(o) for o in c["op"][c["status"] == STATUS_OK] if o is not None})


def _table_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """The profile columns of an Arrow table as numpy arrays (absent columns: all null)."""
    n = table.num_rows
    out: dict[str, np.ndarray] = {}
    for c in COLUMNS:
        if c not in table.column_names or pa.types.is_null(table.schema.field(c).type):
            out[c] = np.full(n, None, dtype=object) if c in _STR_COLUMNS else np.full(n, np.nan)
            continue
        arr = table.column(c)
        kind = arr.type
        if c in _STR_COLUMNS:
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise TypeError(f"column {c} holds {kind}, not text")
            # to_pylist, not to_numpy: Arrow converts text to numpy through pandas, a slow import
            values = np.empty(n, dtype=object)
            values[:] = arr.to_pylist()
            out[c] = values
        else:
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                raise TypeError(f"column {c} holds {kind}, not numbers")
            out[c] = _numbers(arr)
    return out


def _numbers(arr: pa.ChunkedArray) -> np.ndarray:
    """A numeric Arrow column as float64 with NaN for null, read from its buffers (Arrow's own
    conversion of a column with nulls goes through pandas, a slow import)."""
    parts = []
    for chunk in arr.chunks:
        n, off = len(chunk), chunk.offset
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=chunk.type.to_pandas_dtype())[off:off + n].astype(np.float64)
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")[off:off + n]
            values[bits == 0] = np.nan
        parts.append(values)
    return np.concatenate(parts) if parts else np.empty(0)


def empty_rows() -> "pd.DataFrame":
    """An empty row table with the profile's columns and dtypes."""
    import pandas as pd

    return normalize_rows(pd.DataFrame({c: [] for c in COLUMNS}))


def normalize_rows(df: "pd.DataFrame") -> "pd.DataFrame":
    """Return ``df`` with exactly the profile columns, in order, with canonical dtypes."""
    import pandas as pd

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


def _is_null(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, pandas' NA and NaT are not equal to themselves
    except TypeError:  # pandas' NA refuses to be a bool
        return True


def row_key(row: "dict[str, Any] | pd.Series") -> tuple:
    """Hashable identity of a measured point (op, shape, dtype); nulls become None."""
    out = []
    for col in KEY_COLUMNS:
        v = row.get(col) if isinstance(row, dict) else row[col]
        out.append(None if not isinstance(v, str) and _is_null(v) else (v if isinstance(v, str) else int(v)))
    return tuple(out)


def keys_of(df: "pd.DataFrame") -> set[tuple]:
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
    rows = normalize_rows(profile.rows)  # the canonical dtypes, whatever form the rows were given in
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
        os.chmod(tmp, _file_mode())  # mkstemp's 0600 would make a shared profile unreadable to others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_mode() -> int:
    """The mode a newly created file gets under the process's umask (0644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


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
    optional = ((SHAPE_COLUMNS_SINCE_V2 if version < 2 else ()) + (SHAPE_COLUMNS_SINCE_V3 if version < 3 else ())
                + (SHAPE_COLUMNS_SINCE_V6 if version < 6 else ()))
    missing = [c for c in COLUMNS if c not in table.column_names and c not in optional]
    if missing:
        raise ProfileError(f"{path} lacks profile columns: {', '.join(missing)}")
    profile = Profile(table=table, meta=meta)
    try:
        profile.columns()
    except (ValueError, TypeError) as err:
        raise ProfileError(f"{path}: a column has the wrong type ({err})") from None
    return profile


def check_profile(profile: Profile, required_ops: Iterable[str] = ()) -> list[str]:
    """Return every problem found in a profile (empty list when valid)."""
    problems: list[str] = []
    c, meta = profile.columns(), profile.meta
    for key in META_REQUIRED:
        if key not in meta:
            problems.append(f"metadata key {key!r} missing")
    op, status = c["op"], c["status"]
    op_null = np.array([v is None for v in op], dtype=bool)
    unknown = sorted({str(v) for v in op[~op_null]} - set(OPS))
    if unknown:
        problems.append(f"unknown ops: {', '.join(unknown)}")
    if op_null.any():
        problems.append(f"{int(op_null.sum())} rows without an op")
    status_null = np.array([v is None for v in status], dtype=bool)
    bad_status = sorted({str(v) for v in status[~status_null]} - set(STATUSES))
    if bad_status or status_null.any():
        problems.append(f"invalid status values: {bad_status or ['<null>']}")
    ok = status == STATUS_OK
    for col in TIMING_COLUMNS:
        vals = c[col][ok]
        if np.isnan(vals).any():
            problems.append(f"{int(np.isnan(vals).sum())} measured rows have NaN/null {col}")
        if (vals < 0).any() or (col == "median_us" and (vals <= 0).any()):
            problems.append(f"{int((vals <= 0).sum())} measured rows have non-positive {col}")
    if ok.any():
        med, p10, p90 = (c[k][ok] for k in ("median_us", "p10_us", "p90_us"))
        if ((p10 > med * 1.000001) | (med > p90 * 1.000001)).any():
            problems.append("some rows violate p10 <= median <= p90")
    for name, kind in OPS.items():
        sub = op == name
        if not sub.any():
            continue
        for col in kind.columns:
            missing = int(np.isnan(c[col][sub]).sum())
            if missing:
                problems.append(f"{name}: {missing} rows lack shape column {col}")
        if kind.columns and (np.nan_to_num(np.column_stack([c[k][sub] for k in kind.columns]), nan=1) < 0).any():
            problems.append(f"{name}: negative shape values")
    dup = _duplicates(c)
    if dup:
        problems.append(f"{dup} duplicate rows (same op, shape and dtype)")
    have = {str(v) for v in op[ok]}
    lacking = [o for o in required_ops if o not in have]
    if lacking:
        problems.append(f"no measured rows for ops a simulation needs: {', '.join(lacking)}")
    return problems


def _duplicates(c: dict[str, np.ndarray]) -> int:
    """Rows whose (op, shape, dtype) an earlier row has (nulls equal to nulls)."""
    n = len(c["op"])
    if n < 2:
        return 0
    codes = [np.unique(np.array(["\0" if v is None else str(v) for v in c[k]]), return_inverse=True)[1]
             for k in ("op", "dtype")]
    shape = np.column_stack([np.nan_to_num(c[k], nan=-1.0) for k in SHAPE_COLUMNS])
    keys = np.column_stack([np.column_stack(codes).astype(np.float64), shape])
    return n - len(np.unique(keys, axis=0))


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


def suspicious_rows(rows: "pd.DataFrame", factor: float = 3.0) -> list[int]:
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
