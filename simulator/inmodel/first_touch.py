"""First touch of fresh allocations on a CPU: the page faults of tensors above the mmap threshold.

A tensor above glibc's largest mmap threshold (:data:`pis.allocator.FRESH_ALLOC_THRESHOLD`) is a
fresh mapping at each allocation, so its first write faults in and zeroes every page; below it,
a freed block is reused warm. Hugging Face's ``DynamicCache`` appends by ``torch.cat``, so decode
past B·C·kv_heads·head_dim·itemsize = 32 MiB per layer pays it twice per layer, as a routed
executor's gathered K/V blocks do. No factor describes a cliff: the factor law fits the rows
without such allocations, and the rows with them fit one constant per CPU profile, µs per MiB of
first-touch pages, added outside the factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FirstTouch:
    """µs per MiB of pages a fresh allocation faults in, and the rows it was fitted to."""

    us_per_mib: float
    rows: int

    def cost_us(self, fresh_bytes: "np.ndarray | float") -> np.ndarray:
        """µs of first-touch faults of ``fresh_bytes`` allocated afresh."""
        return self.us_per_mib * np.asarray(fresh_bytes, dtype=np.float64) / 2**20


def fit_first_touch(fresh_mib: "list[float]", excess_us: "list[float]") -> FirstTouch | None:
    """Least squares through the origin (not below 0) of what rows with fresh allocations measure
    beyond their decoder's factor law (``excess_us``) against the MiB they allocate afresh; None
    without such rows."""
    if not fresh_mib:
        return None
    x, y = np.asarray(fresh_mib, dtype=np.float64), np.asarray(excess_us, dtype=np.float64)
    return FirstTouch(max(0.0, float(x @ y / (x @ x))), len(x))
