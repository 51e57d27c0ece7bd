"""What the host's memory allocator does with large blocks: a fact calibration and simulation share.

glibc serves a block above its largest dynamic mmap threshold as a fresh mapping (unless the heap
happens to hold a free block that large), so the first write to it faults in and zeroes every
page; a freed block below it is reused warm from the heap. Calibration warms the allocator and
keeps such copies out of its probes; the simulator prices the first touch of the fresh tensors a
CPU decoder allocates above it.
"""

from __future__ import annotations

#: glibc's largest dynamic mmap threshold on 64-bit (``DEFAULT_MMAP_THRESHOLD_MAX``), in bytes.
FRESH_ALLOC_THRESHOLD = 32 * 2**20
