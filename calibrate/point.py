"""One point of a calibration grid: an op and its shape."""

from __future__ import annotations

from dataclasses import dataclass

from pis.profiles.schema import OPS


@dataclass(frozen=True)
class Point:
    """One shape of one op to measure."""

    op: str
    shape: tuple[tuple[str, int], ...]

    @property
    def shape_dict(self) -> dict[str, int]:
        """The shape as a column -> value dict."""
        return dict(self.shape)


def point(op: str, **shape: int) -> Point:
    """A point with its shape columns in the schema's order (the columns ``op`` uses only)."""
    cols = OPS[op].columns
    if set(shape) != set(cols):
        raise ValueError(f"{op} needs columns {cols}, got {sorted(shape)}")
    return Point(op, tuple((c, int(shape[c])) for c in cols))
