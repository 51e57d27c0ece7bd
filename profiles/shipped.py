"""Profiles shipped with the package, and which one `pis-simulate` uses by default."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from pis.errors import ProfileError

#: The embedded default, in order of preference: a measured H100 or H200 profile,
#: otherwise the measured CPU profile of the 2-core development/CI machine.
DEFAULT_ORDER: tuple[str, ...] = ("h100", "h200", "cpu-2core")


def shipped_profiles() -> dict[str, Path]:
    """Name -> path of every profile shipped in ``pis.profiles``."""
    root = files("pis.profiles")
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".parquet")}


def default_profile() -> Path:
    """Path of the embedded default profile."""
    shipped = shipped_profiles()
    for name in DEFAULT_ORDER:
        if name in shipped:
            return shipped[name]
    raise ProfileError("no profile is shipped with this install; pass --profile FILE "
                       "(make one with pis-calibrate)")


def resolve_profile(name_or_path: str | None) -> Path:
    """A user's ``--profile``: a path, or the name of a shipped profile, or None for the default."""
    if name_or_path is None:
        return default_profile()
    path = Path(name_or_path)
    if path.exists() or path.suffix:
        return path
    shipped = shipped_profiles()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise ProfileError(f"profile {name_or_path!r} is neither a file nor a shipped profile "
                       f"({', '.join(sorted(shipped)) or 'none shipped'})")
