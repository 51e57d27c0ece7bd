"""Honest latency measurement of one zero-argument callable (in the spirit of triton's do_bench).

* CUDA: one pair of CUDA events per repeat brackets only the op; before each repeat a buffer of
  at least twice the L2 size is overwritten, so every repeat starts with a cold L2 (as the
  weights of a real decoder layer do). The flush kernel is queued just before the start event,
  so the op's own launch is hidden behind it and the events measure the kernels, not the CPU
  launch (the launch floor is the separate ``overhead`` op). Optionally the op is captured in a
  CUDA graph and replayed, which also removes the launch gaps *between* the kernels of a
  multi-kernel op (rope, silu_mul).
* CPU: ``time.perf_counter`` around each call; the timings include PyTorch's dispatch.
  Whole-model timings (``pis-validate``, the whole-decoder rows) evict the last-level cache
  before each repeat (:class:`CpuCacheFlush`).
* Wall mode (the ``overhead`` op): wall time of a batch of ``inner`` back-to-back calls,
  synchronized once, divided by ``inner``: the rate at which the framework issues ops.

Repeats adapt to the op: after warm-up, one call is estimated and the repeat count chosen so
the point takes about ``target_s`` (clamped to ``[min_repeats, max_repeats]``). While the spread
``(p90 - p10) / median`` exceeds ``max_spread`` the point is measured again with twice the
repeats, up to ``retries`` times, and the measurement with the lowest median is kept:
interference from other processes only ever adds time, and on a shared machine one burst
can cover most repeats of a point and multiply its median.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pis.allocator import FRESH_ALLOC_THRESHOLD
from pis.executors.base import Step

Fn = Callable[[], object]


@dataclass(frozen=True)
class Timing:
    """Summary of the per-repeat latencies of one point, in microseconds."""

    median_us: float
    p10_us: float
    p90_us: float
    repeats: int
    #: True when the CUDA graph replay of the op was timed
    graph: bool = False

    @property
    def spread(self) -> float:
        """Relative spread ``(p90 - p10) / median``."""
        return (self.p90_us - self.p10_us) / self.median_us if self.median_us > 0 else math.inf


@dataclass(frozen=True)
class TimingConfig:
    """How hard to try per point."""

    #: measured time to aim for per point (sum over repeats), seconds
    target_s: float = 0.05
    min_repeats: int = 5
    max_repeats: int = 200
    #: calls before measuring (compilation, caches, cuBLAS heuristics, allocator)
    warmup: int = 2
    #: re-measure when (p90 - p10) / median is wider than this ...
    max_spread: float = 0.3
    #: ... at most this many times, keeping the measurement with the lowest median
    retries: int = 2
    #: CUDA only: time CUDA-graph replays (falls back to eager when capture fails)
    cuda_graphs: bool = False
    #: CPU whole-model timings (:func:`measure_step`): evict the last-level cache before
    #: every repeat (:class:`CpuCacheFlush`)
    flush_cache: bool = False


def summarize_samples(samples_s: "np.ndarray | list[float]", graph: bool = False) -> Timing:
    """Median and 10th/90th percentiles of per-repeat seconds, as a :class:`Timing` in µs."""
    us = np.asarray(samples_s, dtype=np.float64) * 1e6
    p10, med, p90 = np.percentile(us, [10, 50, 90])
    return Timing(float(med), float(min(p10, med)), float(max(p90, med)), int(us.size), graph)


def fastest_of_retries(first: Timing, again: Callable[[], Timing], max_spread: float,
                       retries: int) -> Timing:
    """``first``, or while the kept measurement's spread exceeds ``max_spread`` (at most
    ``retries`` times) a new one from ``again``: the one with the lowest median is kept."""
    timing = first
    for _ in range(retries):
        if timing.spread <= max_spread:
            break
        timing = min(timing, again(), key=lambda t: t.median_us)
    return timing


class Timer:
    """Adaptive repeats and the spread check; subclasses supply warm-up and sampling."""

    def __init__(self, config: TimingConfig) -> None:
        self.config = config

    def measure(self, fn: Fn, *, inner: int = 1, wall: bool = False, graphs: bool = True) -> Timing:
        """Time ``fn``; with ``wall=True`` each sample is one call's wall time over ``inner``;
        ``graphs=False`` times it eagerly even when the config replays CUDA graphs."""
        cfg = self.config
        if wall:
            run = self._prepare(fn, graphs=False)
            for _ in range(max(cfg.warmup, 1)):
                self._wall_sample(run, inner)
            est = self._wall_sample(run, inner) * inner
            n = self._repeats(est)
            return summarize_samples([self._wall_sample(run, inner) for _ in range(n)])
        run = self._prepare(fn, graphs=cfg.cuda_graphs and graphs)
        graph = run is not fn
        for _ in range(cfg.warmup):
            run()
        n = self._repeats(self._estimate(run))
        return fastest_of_retries(summarize_samples(self._samples(run, n), graph),
                                  lambda: summarize_samples(self._samples(run, 2 * n), graph),
                                  cfg.max_spread, cfg.retries)

    def _repeats(self, seconds_per_call: float) -> int:
        cfg = self.config
        want = cfg.target_s / max(seconds_per_call + self._per_repeat_cost(), 1e-9)
        return int(min(max(math.ceil(want), cfg.min_repeats), cfg.max_repeats))

    # --- hooks -------------------------------------------------------------------------
    def _prepare(self, fn: Fn, graphs: bool) -> Fn:
        return fn

    def _per_repeat_cost(self) -> float:
        return 0.0

    def _estimate(self, fn: Fn) -> float:
        raise NotImplementedError

    def _samples(self, fn: Fn, n: int) -> list[float]:
        raise NotImplementedError

    def _wall_sample(self, fn: Fn, inner: int) -> float:
        raise NotImplementedError


class CpuTimer(Timer):
    """``time.perf_counter`` per call (threads: whatever ``torch.set_num_threads`` says)."""

    method = "cpu: time.perf_counter per call, GEMM weights rotated through a 1 GiB pool (cold), median of adaptive repeats"

    def __init__(self, config: TimingConfig) -> None:
        super().__init__(config)
        warm_allocator()  # time ops as in a process that has run a model

    def _estimate(self, fn: Fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def _samples(self, fn: Fn, n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    def _wall_sample(self, fn: Fn, inner: int) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / inner


class CudaTimer(Timer):
    """CUDA events per repeat around the op only, L2 flushed before every repeat."""

    def __init__(self, config: TimingConfig, device: torch.device) -> None:
        super().__init__(config)
        self.device = device
        props = torch.cuda.get_device_properties(device)
        l2 = int(getattr(props, "L2_cache_size", 0) or 64 * 2**20)
        #: overwritten before every repeat: at least twice the L2 size
        self.flush_bytes = max(2 * l2, 64 * 2**20)
        self._flush_buf = torch.empty(self.flush_bytes, dtype=torch.int8, device=device)
        self._flush_s = self._time_flush()

    @property
    def method(self) -> str:
        graphs = ", CUDA-graph replay" if self.config.cuda_graphs else ""
        return (f"cuda: events around the op per repeat, {self.flush_bytes // 2**20} MiB L2 flush "
                f"between repeats{graphs}, median of adaptive repeats")

    def _flush(self) -> None:
        self._flush_buf.fill_(1)

    def _time_flush(self) -> float:
        for _ in range(3):
            self._flush()
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(10):
            self._flush()
        torch.cuda.synchronize(self.device)
        return (time.perf_counter() - t0) / 10

    def _per_repeat_cost(self) -> float:
        return self._flush_s

    def _prepare(self, fn: Fn, graphs: bool) -> Fn:
        if not graphs:
            return fn
        try:
            # Warm up on a side stream first, as graph capture requires.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(max(self.config.warmup, 1)):
                    fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            torch.cuda.synchronize(self.device)
            return graph.replay
        except RuntimeError:
            # Not capturable (host sync inside, unsupported kernel): time it eagerly.
            torch.cuda.synchronize(self.device)
            return fn

    def _estimate(self, fn: Fn) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        self._flush()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3

    def _samples(self, fn: Fn, n: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
        for s, e in zip(starts, ends):
            self._flush()
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]

    def _wall_sample(self, fn: Fn, inner: int) -> float:
        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(self.device)
        return (time.perf_counter() - t0) / inner


def warm_allocator() -> None:
    """Free one block just under glibc's largest mmap threshold, as any process that has run a
    model has done, so the heap keeps blocks up to that size instead of mapping (and faulting in)
    each anew.

    A young process maps every block over 128 KiB afresh and trims its heap back after each free;
    freeing a mapped block raises both thresholds to its size (glibc's dynamic mmap threshold).
    Without this, a fresh process (``pis-calibrate --only``, the first round of ``pis-validate``'s
    drift probe) times memory-bound ops on tensors between 128 KiB and that threshold several
    times slower than a process that has run a model does, paying for page faults no model pays.
    """
    torch.empty(FRESH_ALLOC_THRESHOLD - 2**20, dtype=torch.uint8)  # mapped, then freed at once


def make_timer(device: torch.device, config: TimingConfig) -> Timer:
    """The timer for ``device``."""
    if device.type == "cuda":
        return CudaTimer(config, device)
    return CpuTimer(config)


def last_level_cache_bytes(default: int = 64 * 2**20, root: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Size of the CPU's largest cache level (Linux sysfs under ``root``), or ``default`` when unknown."""
    sizes = {}
    for d in Path(root).glob("index*"):
        try:
            level = int((d / "level").read_text())
            text = (d / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        try:
            sizes[level] = int(text.rstrip("KMG")) * scale
        except ValueError:
            continue
    return sizes[max(sizes)] if sizes else default


class CpuCacheFlush:
    """Evicts the CPU's last-level cache by overwriting a buffer 1.5x its size (at most 1 GiB).

    A whole-model timing on the CPU repeats one step; a small model's weights then stay in a
    large last-level cache between repeats (a server CPU's L3 can hold a whole validation
    model), while a real LLM's weights stream from DRAM every step. Flushing before each repeat
    times the stand-in model the way its full-size original runs, as the GEMM weight pool does
    for single ops; 1.5x the cache evicts as well as a larger buffer does.
    """

    def __init__(self, llc_bytes: int | None = None) -> None:
        self.bytes = min(int(1.5 * (llc_bytes or last_level_cache_bytes())), 2**30)
        self._buf: torch.Tensor | None = None
        self._n = 0

    def __call__(self) -> None:
        if self._buf is None:
            self._buf = torch.empty(self.bytes // 4, dtype=torch.float32)
        self._n += 1
        self._buf.fill_(float(self._n))  # a new value: the writes cannot be elided


# --- whole-model timing (pis-validate and the whole-decoder profile rows) --------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def _cpu_flush() -> CpuCacheFlush:
    """One flush buffer per process (its first use allocates 1.5x the LLC)."""
    return CpuCacheFlush()


def _one(step: Step, device: torch.device, flush: Callable[[], None] | None = None) -> float:
    """Seconds of one timed call (``setup`` and ``flush`` untimed, in that order)."""
    if step.setup is not None:
        step.setup()
    if flush is not None:
        flush()
    _sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step.run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3
    t0 = time.perf_counter()
    step.run()
    return time.perf_counter() - t0


def measure_step(step: Step, device: torch.device, effort: TimingConfig) -> tuple[float, float, float, int]:
    """Median, p10 and p90 in ms and the repeat count of ``step.run`` on ``device``.

    Each repeat calls ``setup`` first (untimed); on CUDA, events bracket the step and the
    device is synchronized before it, so nothing queued earlier leaks into the timing. On the
    CPU the last-level cache is evicted after ``setup`` (``effort.flush_cache``). As in
    calibration (:class:`Timer`), a measurement whose spread is too wide
    is repeated and the one with the lowest median kept.
    """
    flush = _cpu_flush() if device.type == "cpu" and effort.flush_cache else None
    with torch.inference_mode():
        for _ in range(max(effort.warmup, 1)):
            est = _one(step, device, flush)
        n = int(min(max(math.ceil(effort.target_s / max(est, 1e-6)), effort.min_repeats), effort.max_repeats))

        def sample() -> Timing:
            return summarize_samples([_one(step, device, flush) for _ in range(n)])

        t = fastest_of_retries(sample(), sample, effort.max_spread, effort.retries)
    return t.median_us / 1e3, t.p10_us / 1e3, t.p90_us / 1e3, t.repeats
