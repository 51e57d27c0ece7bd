"""A resumable, chunked calibration run whose output file is its own checkpoint.

Every ``checkpoint_every`` points (or ``checkpoint_seconds``) the profile measured so far is
rewritten atomically with ``complete = false``. Rerunning the same command reads it back and
measures only the points it lacks (by :func:`pis.profiles.store.row_key`), so a run killed at
any moment loses at most one chunk and no point is measured twice. A file from a different
configuration (device, dtype, grid, threads, timing method) is never mixed in: the run refuses
unless ``--force`` says to start over.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from tqdm import tqdm

from pis.calibrate import benches, ops
from pis.calibrate.device import TORCH_DTYPES, default_dtype, device_meta, resolve_device
from pis.calibrate.grid import (GRID_NAMES, MODEL_ALIGN, MODEL_SPARSITIES, Grid, build_grid, decoder_passes,
                                model_pairs, schedule, timing_config)
from pis.calibrate.anchors import Anchors, anchor_points, too_noisy
from pis.calibrate.point import Point
from pis.calibrate.timing import Timer, make_timer
from pis.errors import PisError, ProfileError, Unsupported
from pis.profiles.schema import (DTYPE_BYTES, OPS, SCHEMA_VERSION, STATUS_OK, STATUS_SKIPPED_NOISY,
                                 STATUS_SKIPPED_OOM, STATUS_SKIPPED_UNSUPPORTED, WHOLE_DECODER_OPS, op_bytes,
                                 op_flops)
from pis.profiles.store import (KEY_COLUMNS, Profile, empty_rows, keys_of, normalize_rows, read_profile,
                               row_key, suspicious_rows, write_profile)

#: Metadata that must match for a file to be resumed (else: another --out, or --force).
IDENTITY_KEYS: tuple[str, ...] = ("device_kind", "device_name", "dtype", "grid_name", "timing_method")


@dataclass
class RunOptions:
    """Everything a calibration run depends on (the CLI's options)."""

    out: Path
    device: str = "cpu"
    grid: str = "quick"
    dtype: str | None = None
    model: str | None = None
    time_budget_min: float | None = None
    threads: int | None = None
    cuda_graphs: bool = True
    force: bool = False
    checkpoint_every: int = 50
    checkpoint_seconds: float = 20.0
    progress: bool = True
    #: measure only these ops of the grid (None: all)
    only: tuple[str, ...] | None = None
    #: passes over the whole-decoder points (None: the grid's default, :func:`decoder_passes`)
    decoder_passes: int | None = None
    #: testing aid: sleep after every point (lets a test kill the run mid-way)
    point_delay_s: float = 0.0


@dataclass
class RunResult:
    """How a run ended."""

    #: "complete", "already_complete", "time_budget"
    status: str
    #: measurements made by this run (a whole-decoder point counts once per pass)
    measured: int
    #: points of the grid with a row in the file, of ``total``
    done: int
    total: int
    path: Path
    counts: dict[str, int] = field(default_factory=dict)


def _check_out(out: Path, force: bool) -> Profile | None:
    """The profile already at ``out`` (None if there is none, or --force discards it)."""
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise PisError(f"cannot write {out}: folder {folder} does not exist")
    if not out.exists():
        if not _writable(folder):
            raise PisError(f"cannot write {out}: folder {folder} is not writable")
        return None
    if out.is_dir():
        raise PisError(f"--out {out} is a folder; give a file name such as {out / 'profile.parquet'}")
    if not _writable(folder):
        raise PisError(f"cannot write {out}: folder {folder} is not writable")
    try:
        existing = read_profile(out)
    except ProfileError as err:
        if force:
            return None
        raise PisError(f"{out} exists and is not a readable pis profile ({err}); "
                       f"choose another --out or pass --force to overwrite it") from None
    return None if force else existing


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def _identity_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in IDENTITY_KEYS + ("cpu_threads",):
        if key == "cpu_threads" and new.get("device_kind") != "cpu":
            continue
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} in the file, {new.get(key)!r} now"
    old_sha = (old.get("grid_params") or {}).get("points_sha256")
    if old_sha != new["grid_params"]["points_sha256"]:
        return "the grid's points differ (another --model, or another tool version)"
    return None


def _point_row(p: Point, dtype: str) -> dict[str, Any]:
    shape = p.shape_dict
    row: dict[str, Any] = {"op": p.op, **shape, "dtype": dtype}
    row["flops"] = float(op_flops(p.op, shape)) if shape else 0.0
    row["bytes"] = float(op_bytes(p.op, shape, dtype)) if shape else 0.0
    return row


def _is_oom(err: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    text = str(err).lower()
    return isinstance(err, oom) or "out of memory" in text or "can't allocate memory" in text


def measure_point(p: Point, dtype: str, device: torch.device, timer: Timer,
                  warn: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Measure one point; unsupported ops and out-of-memory become skipped rows."""
    row = _point_row(p, dtype)
    failed = False
    try:
        bench = benches.build(p.op, p.shape_dict, TORCH_DTYPES[dtype], device)
        if bench.timed is not None:
            med, p10, p90, n = bench.timed()  # ms
            row.update(median_us=med * 1e3, p10_us=p10 * 1e3, p90_us=p90 * 1e3, repeats=n,
                       status=STATUS_OK, backend=bench.backend)
        else:
            t = timer.measure(bench.fn, inner=bench.inner, wall=bench.wall, graphs=bench.graphs)
            row.update(median_us=t.median_us, p10_us=t.p10_us, p90_us=t.p90_us, repeats=t.repeats,
                       status=STATUS_OK, backend=bench.backend + ("+graph" if t.graph else ""))
    except Unsupported as err:
        row.update(status=STATUS_SKIPPED_UNSUPPORTED, backend=str(err)[:120])
    except (RuntimeError, NotImplementedError, MemoryError) as err:
        failed = True
        if isinstance(err, MemoryError) or _is_oom(err):
            row.update(status=STATUS_SKIPPED_OOM, backend="out of memory")
        else:
            msg = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            warn(f"warning: {p.op} {p.shape_dict} failed ({msg}); recorded as skipped_unsupported")
            row.update(status=STATUS_SKIPPED_UNSUPPORTED, backend=msg)
    if failed:  # outside the handler, so the traceback no longer pins the tensors
        ops.clear_cache()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
    return row


class _Checkpoint:
    """The rows measured so far and the atomic rewrite of the output file."""

    def __init__(self, path: Path, grid: Grid, meta: dict[str, Any], existing: pd.DataFrame) -> None:
        self.path = path
        self.meta = meta
        self.order = {_key(p, meta["dtype"]): i for i, p in enumerate(grid.points)}
        self.existing = existing
        self.new: list[dict[str, Any]] = []
        self._new_index: dict[tuple, int] = {}
        #: measuring time of earlier runs of this file, and when this one started
        self.base_s = float(meta.get("duration_s") or 0.0)
        self.start = time.monotonic()
        self.saved_at = self.start
        self.unsaved = 0

    def add(self, row: dict[str, Any]) -> None:
        """Add ``row``, replacing this run's row of the same point (another pass of it) if there
        is one; it also supersedes a row of the file (see :meth:`rows`)."""
        key = row_key(row)
        if key in self._new_index:
            self.new[self._new_index[key]] = row
        else:
            self._new_index[key] = len(self.new)
            self.new.append(row)
        self.unsaved += 1

    def rows(self) -> pd.DataFrame:
        frames = [self.existing] + ([normalize_rows(pd.DataFrame(self.new))] if self.new else [])
        rows = normalize_rows(pd.concat([f for f in frames if len(f)], ignore_index=True)) \
            if any(len(f) for f in frames) else empty_rows()
        # A point measured again in this run (another pass) supersedes the file's row of it.
        rows = rows.drop_duplicates(list(KEY_COLUMNS), keep="last")
        # Grid order, so a resumed file is byte-for-byte the order a single run writes.
        rank = [self.order.get(k, len(self.order)) for k in map(row_key, rows.to_dict("records"))]
        return rows.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)

    def save(self, complete: bool) -> None:
        duration = self.base_s + time.monotonic() - self.start
        meta = dict(self.meta, complete=complete, duration_s=round(duration, 1))
        write_profile(Profile(self.rows(), meta), self.path)
        self.saved_at = time.monotonic()
        self.unsaved = 0

    def due(self, every: int, seconds: float) -> bool:
        return self.unsaved >= every or (self.unsaved and time.monotonic() - self.saved_at >= seconds)


def _key(p: Point, dtype: str) -> tuple:
    return row_key({"op": p.op, **p.shape_dict, "dtype": dtype})


#: Metadata key of the passes over whole-decoder points: point key (JSON) -> timing per pass.
PASSES_META = "decoder_passes"
#: Metadata key of the anchor checks and what they say of the machine (:mod:`pis.calibrate.anchors`).
NOISE_META = "machine_noise"
_PASS_FIELDS: tuple[str, ...] = ("median_us", "p10_us", "p90_us", "repeats", "status", "backend")


def _pass_key(key: tuple) -> str:
    return json.dumps(list(key))


def _plain(v: Any) -> Any:
    """A JSON-ready scalar (numpy numbers to Python, NaN to None)."""
    if v is None or isinstance(v, str):
        return v
    v = v.item() if hasattr(v, "item") else v
    return None if isinstance(v, float) and v != v else v


def median_pass(row: dict[str, Any], passes: list[dict[str, Any]]) -> dict[str, Any]:
    """``row`` with the timing of its median pass: the middle one of the measured passes by
    median time (the faster of the middle two for an even count), so that median, p10 and p90
    stay those of one measurement; the last pass where none measured."""
    ok = sorted((t for t in passes if t.get("status") == STATUS_OK), key=lambda t: t["median_us"])
    pick = ok[(len(ok) - 1) // 2] if ok else passes[-1]
    return {**row, **{k: v for k, v in pick.items() if v is not None}}


def calibrate(opts: RunOptions, echo: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> RunResult:
    """Run (or resume) a calibration; see the module docstring."""
    out = Path(opts.out)
    if opts.grid not in GRID_NAMES:
        raise PisError(f"unknown grid {opts.grid!r}; choose one of {', '.join(GRID_NAMES)}")
    if opts.dtype is not None and opts.dtype not in DTYPE_BYTES:
        raise PisError(f"unknown dtype {opts.dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    device = resolve_device(opts.device)
    existing = _check_out(out, opts.force)
    dtype = opts.dtype or default_dtype(device.type)
    if opts.threads is not None:
        if opts.threads < 1:
            raise PisError(f"--threads must be at least 1, got {opts.threads}")
        torch.set_num_threads(opts.threads)
    if opts.time_budget_min is not None and opts.time_budget_min <= 0:
        raise PisError(f"--time-budget must be positive minutes, got {opts.time_budget_min}")

    model_meta: dict[str, Any] | None = None
    pairs: list[tuple[int, int]] = []
    if opts.model:
        name, pairs, dims = model_pairs(opts.model)
        model_meta = {"model": name, "dims": dims, "pairs": [list(p) for p in pairs],
                      "sparsities": list(MODEL_SPARSITIES), "align": MODEL_ALIGN}
    grid = build_grid(opts.grid, device.type, dtype, pairs, model_meta["model"] if model_meta else None,
                      model_meta["dims"] if model_meta else None, opts.only)
    tcfg = timing_config(opts.grid, device.type, opts.cuda_graphs)

    timer = make_timer(device, tcfg)
    meta = device_meta(device, dtype, timer.method)
    meta.update(schema_version=SCHEMA_VERSION, grid_name=grid.name,
                grid_params={**grid.params, "timing": asdict(tcfg)}, complete=False)
    if model_meta:
        meta["model_shapes"] = model_meta

    rows = existing.rows if existing is not None else empty_rows()
    if existing is not None:
        why = _identity_mismatch(existing.meta, meta)
        if why:
            raise PisError(f"{out} holds a profile of another configuration ({why}); "
                           f"use another --out, or --force to start it over")
        meta["created"] = existing.meta.get("created", meta["created"])
        meta["duration_s"] = float(existing.meta.get("duration_s") or 0.0)
    passes = opts.decoder_passes if opts.decoder_passes is not None else decoder_passes(grid.name, device.type)
    if passes < 1:
        raise PisError(f"--decoder-passes must be at least 1, got {passes}")
    meta["grid_params"]["decoder_passes"] = passes
    #: timings of each pass over the whole-decoder points (kept in the file, so a resumed run
    #: neither repeats nor loses a pass)
    recorded: dict[str, list[dict[str, Any]]] = dict((existing.meta.get(PASSES_META) or {}) if existing else {})
    done = keys_of(rows) if len(rows) else set()
    if passes > 1:
        meta[PASSES_META] = recorded
        # A row the file holds without recorded passes (one pass, or an older file) is its first pass.
        for r in rows[rows["op"].isin(WHOLE_DECODER_OPS)].to_dict("records"):
            recorded.setdefault(_pass_key(row_key(r)), [{f: _plain(r.get(f)) for f in _PASS_FIELDS}])

    def measured_passes(p: Point) -> int:
        key = _key(p, dtype)
        return max(len(recorded.get(_pass_key(key), ())), int(key in done))

    tasks = schedule(grid.points, passes)
    todo = [(p, k) for p, k in tasks if measured_passes(p) <= k]
    total = len(grid.points)
    if existing is not None and (not todo or existing.meta.get("complete")):
        if not existing.meta.get("complete"):
            _Checkpoint(out, grid, meta, rows).save(complete=True)
        echo(f"{out} is already complete ({total} points of grid {grid.name!r}); nothing to do "
             f"(--force measures it again)")
        return RunResult("already_complete", 0, total, total, out)
    if existing is not None:
        have = sum(_key(p, dtype) in done for p in grid.points)
        more = sum(1 for p, _ in todo if _key(p, dtype) in done)
        echo(f"resuming {out}: {have} of {total} points already measured"
             + (f"; {more} more pass(es) over whole-decoder points" if more else ""))

    if device.type == "cpu":
        _note_load(meta, echo)
    ckpt = _Checkpoint(out, grid, meta, rows)
    anchors = Anchors.resume(anchor_points(grid.points, dtype), lambda q: measure_point(q, dtype, device, timer),
                             existing.meta.get(NOISE_META) if existing else None)
    budget_s = opts.time_budget_min * 60.0 if opts.time_budget_min else None
    start = ckpt.start
    counts: dict[str, int] = {}
    status = "complete"
    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), unit="pt", file=sys.stderr,
               disable=not opts.progress, dynamic_ncols=True, desc=f"{grid.name} {device.type}")
    measured = 0
    try:
        torch.manual_seed(0)
        for p, k in todo:
            if budget_s is not None and time.monotonic() - start >= budget_s:
                status = "time_budget"
                break
            if anchors.due() and anchors.check() is not None:
                meta[NOISE_META] = anchors.summary()
            bar.set_postfix_str(p.op if not k else f"{p.op} (pass {k + 1})", refresh=False)
            row = measure_point(p, dtype, device, timer, warn=bar.write)
            anchors.mark(_key(p, dtype))
            measured += 1
            if passes > 1 and p.op in WHOLE_DECODER_OPS:
                mine = recorded.setdefault(_pass_key(_key(p, dtype)), [])
                mine.append({f: _plain(row.get(f)) for f in _PASS_FIELDS})
                row = median_pass(row, mine)
            ckpt.add(row)
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            bar.update(1)
            if opts.point_delay_s:
                time.sleep(opts.point_delay_s)
            if ckpt.due(opts.checkpoint_every, opts.checkpoint_seconds):
                ckpt.save(complete=False)
        if status == "complete":
            _recheck(ckpt, dtype, device, timer, echo)
            anchors.check()
            again = _remeasure_disturbed(ckpt, anchors, dtype, device, timer, echo)
            noisy = _settle_passes(ckpt, recorded, dtype, device, timer, echo) if passes > 1 else 0
            meta[NOISE_META] = anchors.summary(again, noisy)
            warning = too_noisy(meta[NOISE_META])
            if warning:
                echo(warning)
    except KeyboardInterrupt:
        bar.close()
        _save_partial(ckpt, out, echo, "interrupted")
        raise
    finally:
        bar.close()
        ops.clear_cache()
    done_n = len(ckpt.rows())
    if status == "time_budget":
        _save_partial(ckpt, out, echo, f"time budget of {opts.time_budget_min:g} min reached")
    else:
        ckpt.save(complete=True)
    return RunResult(status, measured, done_n, total, out, counts)


def _point_of(row: dict[str, Any]) -> Point:
    return Point(row["op"], tuple((c, int(row[c])) for c in OPS[row["op"]].columns))


def _remeasure_disturbed(ckpt: _Checkpoint, anchors: Anchors, dtype: str, device: torch.device, timer: Timer,
                         echo: Callable[[str], None]) -> int:
    """Measure again this run's rows taken next to a disturbed anchor check (at most a third of
    them: a run disturbed throughout says so in its summary instead); a new measurement replaces
    the first when the anchors read the machine back at its reference. Returns how many did."""
    keys = set(anchors.disturbed())
    todo = [i for i, r in enumerate(ckpt.new) if row_key(r) in keys and r["op"] not in WHOLE_DECODER_OPS]
    todo = todo[: max(1, len(ckpt.new) // 3)]
    if not todo:
        return 0
    echo(f"re-measuring {len(todo)} point(s) timed while the machine ran off its usual speed")
    replaced = 0
    for i in todo:
        if anchors.due():
            anchors.check()
        row = measure_point(_point_of(ckpt.new[i]), dtype, device, timer)
        anchors.check()
        if row["status"] == STATUS_OK and anchors.calm():
            ckpt.new[i] = row
            replaced += 1
    echo(f"{replaced} of {len(todo)} re-measured at the machine's usual speed replace their first measurement")
    return replaced


#: Whole-decoder passes further apart than this (max / min − 1) are measured once more.
PASS_SPREAD = 0.15


def _settle_passes(ckpt: _Checkpoint, recorded: dict[str, list[dict[str, Any]]], dtype: str,
                   device: torch.device, timer: Timer, echo: Callable[[str], None]) -> int:
    """Whole-decoder rows of this run whose passes disagree by more than :data:`PASS_SPREAD` get
    one more pass; a row keeps the median pass when two of its passes agree within the bound,
    else it is left out of every fit (status ``skipped_noisy``). Returns how many were."""
    noisy = 0
    for i, row in enumerate(ckpt.new):
        if row["op"] not in WHOLE_DECODER_OPS or row.get("status") != STATUS_OK:
            continue
        mine = recorded.get(_pass_key(row_key(row)), [])
        if len(_times(mine)) < 2 or _spread(mine) <= PASS_SPREAD:
            continue
        extra = measure_point(_point_of(row), dtype, device, timer)
        mine.append({f: _plain(extra.get(f)) for f in _PASS_FIELDS})
        if _agreeing(mine) > PASS_SPREAD:
            ckpt.new[i] = {**row, "status": STATUS_SKIPPED_NOISY}
            noisy += 1
        else:
            ckpt.new[i] = median_pass(row, mine)
    if noisy:
        echo(f"{noisy} whole-decoder point(s) whose passes disagree by more than {100 * PASS_SPREAD:.0f} % "
             f"are left out of the in-model fits (status {STATUS_SKIPPED_NOISY})")
    return noisy


def _times(passes: list[dict[str, Any]]) -> list[float]:
    return sorted(float(t["median_us"]) for t in passes if t.get("status") == STATUS_OK and t.get("median_us"))


def _spread(passes: list[dict[str, Any]]) -> float:
    t = _times(passes)
    return t[-1] / t[0] - 1.0 if len(t) > 1 else 0.0


def _agreeing(passes: list[dict[str, Any]]) -> float:
    """The smallest gap (ratio − 1) between two of the passes (-1 with fewer than two)."""
    t = _times(passes)
    return min(b / a - 1.0 for a, b in zip(t, t[1:])) if len(t) > 1 else -1.0


def _recheck(ckpt: _Checkpoint, dtype: str, device: torch.device, timer: Timer,
             echo: Callable[[str], None]) -> None:
    """Measure this run's suspicious rows once more, at the end; keep the faster median."""
    new = normalize_rows(pd.DataFrame(ckpt.new)) if ckpt.new else empty_rows()
    bad = suspicious_rows(new)
    if not bad:
        return
    echo(f"re-measuring {len(bad)} point(s) slower than a larger shape of their op (interference?)")
    fixed = 0
    for i in bad:
        old = ckpt.new[i]
        row = measure_point(_point_of(old), dtype, device, timer)
        if row["status"] == STATUS_OK and row["median_us"] < old["median_us"]:
            ckpt.new[i] = row
            fixed += 1
    echo(f"{fixed} of {len(bad)} re-measured point(s) came out faster and replace the first measurement")


def _note_load(meta: dict[str, Any], echo: Callable[[str], None]) -> None:
    """Record how busy the CPU was: other processes make CPU timings slow and noisy."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return
    cores = os.cpu_count() or 1
    meta["notes"] = f"1-minute load average {load:.2f} on {cores} CPUs when the run started"
    if load > 0.5 * cores:
        echo(f"warning: this machine is busy (load average {load:.1f} on {cores} CPUs); "
             f"CPU timings will be slower and noisier than on a quiet machine")


def _save_partial(ckpt: _Checkpoint, out: Path, echo: Callable[[str], None], why: str) -> None:
    ckpt.save(complete=False)
    echo(f"{why}: {len(ckpt.rows())} of {len(ckpt.order)} points saved to {out} (incomplete); "
         f"rerun the same command to resume")
