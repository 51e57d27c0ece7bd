"""A profile's derived state, kept on disk between processes.

Building a profile's interpolation meshes and fitting its in-model correction takes scipy and
most of a second; both depend only on the profile's bytes and on pis's code. The first
simulation of a profile file stores them in the cache folder, and later processes load them, so
a one-point query starts in a fraction of a second. Entries are keyed by the profile's sha256
and a fingerprint of the code that derives them: a changed profile or a changed pis never reads
a stale entry. The folder is ``$PIS_CACHE_DIR``, else ``$XDG_CACHE_HOME/pis``, else
``~/.cache/pis``; ``PIS_CACHE_DIR=off`` turns the cache off, and deleting the folder is always
safe. Writes are atomic; a folder that cannot be written just means no cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the layout of an entry changes.
CACHE_FORMAT = 1
#: The modules whose code decides what is derived from a profile (their bytes are fingerprinted).
_DERIVING_MODULES: tuple[str, ...] = tuple(f"pis.{m}" for m in (
    "simulator.interp", "simulator.opmodel", "simulator.estimator", "simulator.opsum", "simulator.opgraph",
    "simulator.points", "simulator.pruning", "simulator.dispatch", "simulator.inmodel.rows",
    "simulator.inmodel.factor_law", "simulator.inmodel.framework", "simulator.inmodel.first_touch",
    "simulator.inmodel.host_issue", "simulator.inmodel.graph_replay", "simulator.inmodel.correction",
    "simulator.families", "profiles.schema", "pruned", "models",
))


def cache_root() -> Path | None:
    """The cache folder, or None when ``PIS_CACHE_DIR=off``."""
    env = os.environ.get("PIS_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pis"


@cache
def code_fingerprint() -> str:
    """sha256 over the source of the modules that derive state from a profile."""
    from importlib.util import find_spec

    h = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for name in _DERIVING_MODULES:
        spec = find_spec(name)
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        h.update(name.encode())
        h.update(origin.read_bytes() if origin is not None and origin.is_file() else b"?")
    return h.hexdigest()[:16]


class DerivedCache:
    """The cache entries of one profile (a folder of ``.npz`` and ``.json`` files)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def for_profile(cls, profile_sha256: str) -> "DerivedCache | None":
        """The entry folder of the profile with this sha256 (None with the cache off)."""
        root = cache_root()
        if root is None:
            return None
        return cls(root / f"{profile_sha256[:32]}-{code_fingerprint()}")

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays saved under ``name``, or None."""
        path = self.folder / f"{name}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError):
            return None

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Save ``arrays`` under ``name`` (quietly nothing where the folder is not writable)."""
        self._write(f"{name}.npz", lambda fh: np.savez(fh, **arrays))

    def load_json(self, name: str) -> Any:
        """The JSON value saved under ``name``, or None."""
        try:
            return json.loads((self.folder / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def save_json(self, name: str, value: Any) -> None:
        """Save a JSON value under ``name`` (quietly nothing where the folder is not writable)."""
        self._write(f"{name}.json", lambda fh: fh.write(json.dumps(value).encode()))

    def _write(self, filename: str, write) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=self.folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.replace(tmp, self.folder / filename)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError:
            pass


def encode(value: Any) -> Any:
    """A JSON-ready form of nested tuples, lists, dicts, numpy arrays and scalars (exact floats)."""
    if isinstance(value, np.ndarray):
        return {"nd": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return {"float": repr(value)}
    return value


def decode(value: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "nd" in value:
            return np.array(value["nd"], dtype=value["dtype"]).reshape(value["shape"])
        if "tuple" in value:
            return tuple(decode(v) for v in value["tuple"])
        if "dict" in value:
            return {_hashable(decode(k)): decode(v) for k, v in value["dict"]}
        if "float" in value:
            return float(value["float"])
    return value


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key
