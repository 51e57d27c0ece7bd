"""`pis-profile`: inspect, validate, compare, merge and cross-validate latency profiles.

Every subcommand turns a user error (missing, corrupt, foreign or incompatible file, refused
overwrite) into one line on stderr and exit code 2; nothing here overwrites a file unless
``--force`` says so.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np
import pandas as pd
from tabulate import tabulate

from pis import __version__
from pis.errors import PisError, ProfileError, handle_errors
from pis.profiles.schema import (DTYPE_BYTES, META_REQUIRED, OPS, REQUIRED_OPS, SCHEMA_VERSION, SHAPE_COLUMNS,
                                 STATUS_OK)
from pis.profiles.shipped import resolve_profile
from pis.profiles.store import (KEY_COLUMNS, Profile, check_profile, load_profile, read_profile,
                               suspicious_rows, write_profile)

_FORMATS_TJ = click.Choice(["table", "json"])
_INTERPOLATED_OPS = [name for name, op in OPS.items() if op.columns]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pis-profile")
def main() -> None:
    """Inspect, validate, compare, merge and cross-validate latency profiles (Parquet).

    The format is documented in profiles/README.md (installed with the package).
    """


# --- info -------------------------------------------------------------------------------------

@main.command()
@click.argument("file")
@click.option("--format", "fmt", type=_FORMATS_TJ, default="table", show_default=True)
@handle_errors
def info(file: str, fmt: str) -> None:
    """Metadata and per-op coverage of FILE (rows measured/skipped, shape ranges, latencies)."""
    profile = read_profile(resolve_profile(file))
    coverage = _coverage(profile)
    peaks = _peaks(profile)
    problems = check_profile(profile)
    factors, hosts, framework, splits, fresh = _in_model(profile)
    if fmt == "json":
        click.echo(_dumps({"file": file, "meta": profile.meta, "rows": len(profile.rows),
                           "coverage": coverage, "simulator_peaks": peaks, "problems": problems,
                           "in_model_factors": factors, "framework": framework, "gemm_split": splits,
                           "fresh_alloc": fresh, "stale": staleness(profile)}))
        return
    click.echo(f"profile: {file}  ({len(profile.rows)} rows)")
    ordered = [k for k in META_REQUIRED if k in profile.meta] + sorted(set(profile.meta) - set(META_REQUIRED))
    shown = {"decoder_passes": _pass_spread, "machine_noise": noise_line}
    click.echo(tabulate([[k, shown.get(k, _short)(profile.meta[k])] for k in ordered], tablefmt="plain"))
    if peaks:
        click.echo(f"simulator peaks: {peaks['peak_flops'] / 1e12:.3g} TFLOP/s ({peaks['peak_flops_source']}), "
                   f"{peaks['peak_bandwidth'] / 1e9:.3g} GB/s ({peaks['peak_bandwidth_source']})")
    click.echo("")
    table = [[c["op"], c["measured"], c["skipped"],
              "  ".join(f"{k} {_range(v)}" for k, v in c["shape_ranges"].items()),
              _range(c["median_us"], fmt="{:.3g}")] for c in coverage]
    click.echo(tabulate(table, headers=["op", "measured", "skipped", "shape ranges (values)", "median µs"]))
    if factors:
        click.echo("\nin-model factors (measured whole decoder, less loop glue / predicted op sum; "
                   "executor: a dense cache discipline or a routed family; see docs/model.md):")
        click.echo(tabulate(factors, headers="keys", floatfmt=".3f"))
    if splits:
        click.echo("\nGEMMs vs other ops in the model (fitted to the decoder at two FFN widths: the other ops' "
                   "factor is other_over_gemm x the GEMMs'):")
        click.echo(tabulate(splits, headers="keys", floatfmt=".3f"))
    if framework:
        click.echo("\nHugging Face framework cost per step, added outside the concat factor "
                   "(step_us + us_per_dispatch x dispatches; fitted to decoder_framework rows):")
        click.echo(tabulate(framework, headers="keys", floatfmt=".3f"))
    if fresh:
        click.echo(f"\nfirst touch of fresh tensors over the {fresh['threshold_mib']:g} MiB mmap threshold: "
                   f"{fresh['us_per_mib']:.0f} µs per MiB, added outside the factors (fitted to "
                   f"{fresh['rows']} decoder rows past it)")
    if hosts:
        click.echo("\nhost-issue model of eager GPU steps (latency = combine(us_per_dispatch x dispatches, "
                   "device_factor x op sum, p); see docs/model.md):")
        click.echo(tabulate(hosts, headers="keys", floatfmt=".3f"))
    stale = staleness(profile)
    if stale:
        click.echo(f"\n{stale}")
    if problems:
        click.echo(f"\n{len(problems)} problem(s); run `pis-profile validate {file}`")


def staleness(profile: Profile) -> str | None:
    """One line when the profile predates this pis: its schema version, and the ops this pis
    prices that it never measured (nor skipped), which predictions then answer by stand-ins or
    roofline, flagged; None for a current profile."""
    version = int(profile.meta.get("schema_version", 1))
    if version >= SCHEMA_VERSION:
        return None
    rows = profile.rows
    seen = set(rows["op"].astype(str)) if len(rows) else set()
    cuda = str(profile.meta.get("device_kind", "")) in ("cuda", "gpu")
    missing = [op for op, kind in OPS.items() if op not in seen and (cuda or not kind.cuda_only)]
    line = f"stale: schema v{version}, older than this pis's v{SCHEMA_VERSION}"
    if missing:
        line += (f"; never measured: {', '.join(missing)} (priced by stand-ins or roofline, flagged; "
                 "recalibrate, or add them with `pis-calibrate --only` and `pis-profile merge`)")
    return line


def _in_model(profile: Profile) -> tuple[Any, ...]:
    """The measured in-model factors; on CUDA profiles the fitted host-issue models, on CPU
    profiles Hugging Face's fitted framework cost, the GEMM / other-ops split and the first-touch
    cost of fresh allocations (a dict, or None)."""
    from pis.allocator import FRESH_ALLOC_THRESHOLD
    from pis.simulator.api import Simulator
    from pis.simulator.inmodel.rows import DIMS

    try:
        correction = Simulator(profile).correction
        summary = correction.summary()
    except PisError:  # a profile too incomplete to predict its own decoders
        return [], [], [], [], None
    framework = [dict(phase=phase, step_us=f.step_us, us_per_dispatch=f.us_per_dispatch, rows=f.rows)
                 for phase, f in sorted(correction.framework.items())]
    if not correction.host_bound:
        fit = correction.first_touch()
        fresh = (dict(threshold_mib=FRESH_ALLOC_THRESHOLD / 2**20, us_per_mib=fit.us_per_mib, rows=fit.rows)
                 if fit else None)
        return summary, [], framework, correction.splits(), fresh
    hosts = [dict(kv_cache=kv, **dict(zip(DIMS, dims)), phase=phase, us_per_dispatch=f.us_per_dispatch,
                  device_factor=f.device_factor, p=f.p, rows=f.rows)
             for (kv, dims, phase), f in sorted(correction.host_issue_fits().items())]
    return summary, hosts, framework, [], None


def _coverage(profile: Profile) -> list[dict[str, Any]]:
    rows = profile.rows
    out = []
    for op in sorted(rows["op"].dropna().unique()):
        sub = rows[rows["op"] == op]
        ok = sub[sub["status"] == STATUS_OK]
        skipped = sub[sub["status"] != STATUS_OK]
        cols = OPS[op].columns if op in OPS else ()
        ranges = {}
        for c in cols:
            v = ok[c].dropna().astype("int64")
            if len(v):
                ranges[c] = {"min": int(v.min()), "max": int(v.max()), "values": int(v.nunique())}
        med = ok["median_us"].dropna()
        out.append({
            "op": op, "measured": int(len(ok)), "skipped": int(len(skipped)),
            "skipped_by_status": {str(k): int(n) for k, n in skipped["status"].value_counts().items()},
            "shape_ranges": ranges,
            "median_us": {"min": float(med.min()), "max": float(med.max())} if len(med) else {},
        })
    return out


def _peaks(profile: Profile) -> dict[str, Any]:
    # Lazy import: the simulator's estimator is only needed for this one line.
    from pis.simulator.estimator import Estimator

    try:
        est = Estimator(profile)
    except PisError:
        return {}
    return {"peak_flops": est.peak_flops, "peak_flops_source": est.peak_source["peak_flops"],
            "peak_bandwidth": est.peak_bandwidth, "peak_bandwidth_source": est.peak_source["peak_bandwidth"]}


def _range(r: dict[str, Any], fmt: str = "{}") -> str:
    if not r:
        return "-"
    lo, hi = fmt.format(r["min"]), fmt.format(r["max"])
    span = lo if lo == hi else f"{lo}–{hi}"
    return f"{span} ({r['values']})" if "values" in r else span


def _pass_spread(passes: dict[str, list[dict[str, Any]]]) -> str:
    """One line on the passes over whole-decoder points: how many, and how far apart they read."""
    spreads = []
    for timings in passes.values():
        meds = [t["median_us"] for t in timings if t.get("status") == STATUS_OK and t.get("median_us")]
        if len(meds) > 1:
            spreads.append(100.0 * (max(meds) / min(meds) - 1.0))
    counts = sorted({len(t) for t in passes.values()})
    line = f"{len(passes)} whole-decoder points x {'/'.join(map(str, counts))} passes (the median kept)"
    if spreads:
        line += (f"; passes apart (max / min - 1): median {float(np.median(spreads)):.1f} %, "
                 f"max {max(spreads):.1f} %")
    return line


def noise_line(noise: dict[str, Any]) -> str:
    """One line on how the machine behaved during calibration (the anchors' checks)."""
    if not isinstance(noise, dict) or not noise.get("checks"):
        return "not measured"
    parts = [f"{len(noise['checks'])} anchor checks"]
    if noise.get("noise_pct") is not None:
        parts.append(f"noise {noise['noise_pct']:.1f} % check to check")
    if noise.get("drift_pct") is not None:
        parts.append(f"drift {noise['drift_pct']:.1f} % over the run")
    parts.append(f"{noise.get('disturbed_checks', 0)} disturbed")
    parts.append(f"{noise.get('remeasured_rows', 0)} points re-measured")
    if noise.get("noisy_decoder_rows"):
        parts.append(f"{noise['noisy_decoder_rows']} whole-decoder rows left out")
    return "; ".join(parts)


def _short(v: Any, width: int = 100) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= width else s[: width - 1] + "…"


# --- validate -----------------------------------------------------------------------------------

@main.command()
@click.argument("file")
@click.option("--require", "require", multiple=True, type=click.Choice(list(OPS)),
              help="Another op that must have measured rows (repeatable), e.g. gemm_2to4.")
@handle_errors
def validate(file: str, require: Sequence[str]) -> None:
    """Check FILE: format, version, metadata, NaN/negative/duplicate rows, required ops.

    Exit 0 and print 'ok: ...' when valid; exit 2 with every reason on one line when not.
    """
    profile = read_profile(resolve_profile(file))
    required = list(dict.fromkeys(list(REQUIRED_OPS) + list(require)))
    problems = check_profile(profile, required) + _dtype_problems(profile, required)
    if problems:
        raise ProfileError(f"{file} is not a valid profile: {'; '.join(problems)}")
    click.echo(f"ok: {len(profile.rows)} rows ({len(profile.ok_rows)} measured), "
               f"ops {', '.join(profile.ops())}")
    slow = suspicious_rows(profile.rows)
    if slow:
        click.echo(f"warning: {len(slow)} measured row(s) are over 3x slower than a larger shape of "
                   f"the same op (interference during calibration?); re-measure them", err=True)


def _dtype_problems(profile: Profile, required: Sequence[str]) -> list[str]:
    """The simulator reads the rows of the metadata dtype only: check they cover what is needed."""
    dtype = profile.meta.get("dtype")
    if dtype is None:
        return []  # already reported as a missing metadata key
    if dtype not in DTYPE_BYTES:
        return [f"metadata dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}"]
    ok = profile.ok_rows
    have_any = set(ok["op"].dropna())
    have = set(ok.loc[ok["dtype"] == dtype, "op"].dropna())
    lacking = [op for op in required if op in have_any and op not in have]
    return [f"no measured {dtype} rows (the metadata dtype) for: {', '.join(lacking)}"] if lacking else []


# --- diff ---------------------------------------------------------------------------------------

@main.command()
@click.argument("a")
@click.argument("b")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@handle_errors
def diff(a: str, b: str, fmt: str) -> None:
    """Per-op latency ratio B/A over the shapes both profiles measured.

    Each profile contributes the rows of its own metadata dtype, so two dtypes of one device
    can be compared too. Ratio > 1: B is slower.
    """
    pa, pb = read_profile(resolve_profile(a)), read_profile(resolve_profile(b))
    table = diff_table(pa, pb)
    if fmt == "json":
        click.echo(_dumps({"a": _describe(a, pa), "b": _describe(b, pb),
                           "ops": table.to_dict("records")}))
    elif fmt == "csv":
        click.echo(table.to_csv(index=False), nl=False)
    else:
        for label, path, p in (("A", a, pa), ("B", b, pb)):
            click.echo(f"{label}: {path}  {p.meta.get('device_name')} ({p.meta.get('dtype')})")
        click.echo(tabulate(table.to_dict("list"), headers="keys", floatfmt=".3f", missingval="-"))
        only = int(table.loc[table["op"] == "all", "only_a"].iloc[0]), int(table.loc[table["op"] == "all", "only_b"].iloc[0])
        click.echo(f"\n{only[0]} points only in A and {only[1]} only in B are not compared.")


def diff_table(pa: Profile, pb: Profile) -> pd.DataFrame:
    """One row per op (and 'all'): common points and quantiles of median_us(B) / median_us(A)."""
    key = ["op", *SHAPE_COLUMNS]
    ta, tb = _timed(pa)[key + ["median_us"]], _timed(pb)[key + ["median_us"]]
    merged = ta.merge(tb, on=key, how="outer", suffixes=("_a", "_b"), indicator=True)
    merged["ratio"] = merged["median_us_b"] / merged["median_us_a"]
    out = []
    for op in [*sorted(merged["op"].unique()), "all"]:
        sub = merged if op == "all" else merged[merged["op"] == op]
        both = sub.loc[sub["_merge"] == "both", "ratio"].to_numpy(dtype=np.float64)
        q = np.percentile(both, [50, 10, 90]) if len(both) else [np.nan] * 3
        out.append({"op": op, "common": int(len(both)),
                    "only_a": int((sub["_merge"] == "left_only").sum()),
                    "only_b": int((sub["_merge"] == "right_only").sum()),
                    "median_ratio": float(q[0]), "p10_ratio": float(q[1]), "p90_ratio": float(q[2])})
    return pd.DataFrame(out)


def _timed(p: Profile) -> pd.DataFrame:
    ok = p.ok_rows
    dtype = p.meta.get("dtype")
    if dtype is not None:
        ok = ok[ok["dtype"] == dtype]
    ok = ok[ok["median_us"].notna()].copy()
    for c in SHAPE_COLUMNS:  # nulls never equal in joins: mark "column unused" explicitly
        ok[c] = ok[c].astype("Int64").fillna(-1).astype("int64")
    ok["op"] = ok["op"].astype(str)
    return ok.drop_duplicates(subset=["op", *SHAPE_COLUMNS])


def _describe(path: str, p: Profile) -> dict[str, Any]:
    m = p.meta
    return {"file": path, "device_name": m.get("device_name"), "dtype": m.get("dtype"),
            "grid_name": m.get("grid_name"), "created": m.get("created"), "rows": int(len(p.rows))}


# --- merge --------------------------------------------------------------------------------------

@main.command()
@click.argument("a")
@click.argument("b")
@click.option("-o", "--out", "--output", "output", required=True, help="Merged profile to write.")
@click.option("--force", is_flag=True,
              help="Merge different devices/dtypes, and overwrite OUTPUT if it exists.")
@click.option("--prefer", type=click.Choice(["a", "b"]), default=None,
              help="A point both measured keeps this profile's measurement (e.g. B re-measured "
                   "some ops with `pis-calibrate --only`).")
@handle_errors
def merge(a: str, b: str, output: str, force: bool, prefer: str | None) -> None:
    """Merge profiles A and B into OUTPUT (written atomically).

    A point both measured keeps the measurement with more repeats (tie: lower p90-p10
    spread; then A), or with --prefer the named profile's. A measured point always beats a
    skipped one.
    """
    out = Path(output)
    if out.exists() and not force:
        raise PisError(f"{output} exists; pass --force to overwrite it")
    pa, pb = load_profile(resolve_profile(a)), load_profile(resolve_profile(b))
    for key in ("device_name", "dtype"):
        va, vb = pa.meta.get(key), pb.meta.get(key)
        if va != vb and not force:
            raise PisError(f"{a} and {b} differ in {key} ({va!r} vs {vb!r}); "
                           f"pass --force to merge them anyway")
    merged, stats = merge_profiles(pa, pb, [a, b], prefer={"a": 0, "b": 1}.get(prefer or ""))
    write_profile(merged, out)
    click.echo(f"merged {a} ({len(pa.rows)} rows) + {b} ({len(pb.rows)} rows) -> {output}: "
               f"{len(merged.rows)} rows; {stats['conflicts']} points in both "
               f"({stats['kept_a']} kept from A, {stats['kept_b']} from B)")


def merge_profiles(pa: Profile, pb: Profile, names: Sequence[str] = ("A", "B"),
                   prefer: int | None = None) -> tuple[Profile, dict[str, int]]:
    """Union of two profiles' rows, one row per key (see ``merge``), with provenance metadata;
    ``prefer`` (0 = A, 1 = B) wins every point both measured."""
    ra, rb = pa.rows.assign(_src=0), pb.rows.assign(_src=1)
    rows = pd.concat([ra, rb], ignore_index=True)
    rows["_ok"] = (rows["status"] == STATUS_OK).astype(int)
    rows["_pref"] = (rows["_src"] == prefer).astype(int) if prefer is not None else 0
    rows["_rep"] = rows["repeats"].astype("Float64").fillna(-1.0).astype(float)
    rows["_spread"] = (rows["p90_us"] - rows["p10_us"]).fillna(math.inf)
    ranked = rows.sort_values(["_ok", "_pref", "_rep", "_spread", "_src"],
                              ascending=[False, False, False, True, True], kind="stable")
    dup = ranked.duplicated(subset=list(KEY_COLUMNS), keep=False)
    winners = ranked.drop_duplicates(subset=list(KEY_COLUMNS), keep="first")
    conflicts = winners[winners.index.isin(ranked.index[dup])]
    stats = {"conflicts": int(len(conflicts)), "kept_a": int((conflicts["_src"] == 0).sum()),
             "kept_b": int((conflicts["_src"] == 1).sum())}
    keep = winners.sort_index().drop(columns=["_src", "_ok", "_pref", "_rep", "_spread"]).reset_index(drop=True)

    ma, mb = pa.meta, pb.meta
    meta = dict(ma)
    meta.pop("merged_from", None)
    # Per-pass timings describe one calibration's rows; merged rows may come from the other.
    meta.pop("decoder_passes", None)
    meta["merged_from"] = [_source_meta(n, p) for n, p in zip(names, (pa, pb))]
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta["tool_version"] = __version__
    # Written by this tool, in this schema's columns, whatever versions went in.
    meta["schema_version"] = SCHEMA_VERSION
    if "model_shapes" not in meta and "model_shapes" in mb:
        meta["model_shapes"] = mb["model_shapes"]
    meta["complete"] = bool(ma.get("complete", False)) and bool(mb.get("complete", False))
    if ma.get("grid_name") != mb.get("grid_name"):
        meta["grid_name"] = f"{ma.get('grid_name')}+{mb.get('grid_name')}"
    differing = sorted(k for k in set(ma) | set(mb)
                       if k not in ("merged_from", "created", "tool_version", "complete", "grid_name",
                                    "notes", "duration_s", "schema_version") and ma.get(k) != mb.get(k))
    if differing:
        # File names only: profiles travel between labs and must not carry local paths.
        note = (f"merged profiles differ in {', '.join(differing)}; values shown are A's "
                f"({Path(names[0]).name})")
        meta["notes"] = f"{ma['notes']}; {note}" if ma.get("notes") else note
    return Profile(rows=keep, meta=meta), stats


def _source_meta(name: str, p: Profile) -> dict[str, Any]:
    m = p.meta
    src = {k: m.get(k) for k in ("device_name", "device_kind", "dtype", "grid_name", "created",
                                 "tool_version", "timing_method") if k in m}
    src["file"] = Path(name).name
    src["rows"] = int(len(p.rows))
    if "merged_from" in m:
        src["merged_from"] = m["merged_from"]
    return src


# --- loo ----------------------------------------------------------------------------------------

@main.command()
@click.argument("file")
@click.option("--op", default="gemm", show_default=True, type=click.Choice(_INTERPOLATED_OPS))
@click.option("--tile-align/--no-tile-align", default=None,
              help="Round unmeasured GEMM N/K up to the tile alignment (default: on for CUDA profiles only).")
@click.option("--by", default=None,
              help="Hold out every value of this shape column at once (e.g. n) instead of one point; "
                   "comma-separated columns hold out each combination (e.g. heads,kv_heads,head_dim).")
@click.option("--worst", type=click.IntRange(0), default=0, show_default=True,
              help="Also list the N points with the largest error.")
@click.option("--format", "fmt", type=_FORMATS_TJ, default="table", show_default=True)
@handle_errors
def loo(file: str, op: str, tile_align: bool | None, by: str | None, worst: int, fmt: str) -> None:
    """Leave-one-out error of the estimator on FILE's measured points of one op.

    Each point is predicted from all the others; reports median, p90 and max |error| in %.
    """
    from pis.simulator.estimator import Estimator, loo_summary

    profile = load_profile(resolve_profile(file))
    est = Estimator(profile, tile_align="auto" if tile_align is None else tile_align)
    df = est.loo_errors(op, by=by)
    summary = loo_summary(df)
    df["abs_pct"] = df["rel_error"].abs() * 100.0
    top = df.sort_values("abs_pct", ascending=False).head(worst)
    if fmt == "json":
        click.echo(_dumps({"file": file, "op": op, "by": by, "tile_align": est.tile_align,
                           "summary": summary, "worst": top.to_dict("records")}))
        return
    if not summary["n"]:
        raise PisError(f"{file}: no {op} points could be cross-validated")
    click.echo(f"leave-one-{by or 'point'}-out {op} on {file} ({est.name}; tile alignment "
               f"{'on' if est.tile_align else 'off'}): n={summary['n']}  "
               f"median |err| {summary['median_abs_pct']:.2f}%  p90 {summary['p90_abs_pct']:.2f}%  "
               f"max {summary['max_abs_pct']:.1f}%")
    for name in ("interp", "roofline"):
        if summary.get(f"n_{name}"):
            click.echo(f"  {name}: {summary[f'n_{name}']} points, median |err| "
                       f"{summary[f'median_abs_pct_{name}']:.2f}%")
    if worst:
        cols = [*OPS[op].columns, "measured_us", "predicted_us", "abs_pct", "source", "extrapolated"]
        click.echo(tabulate(top[cols].to_dict("list"), headers="keys", floatfmt=".4g"))


def _dumps(obj: Any) -> str:
    """JSON with numpy scalars converted and NaN/inf written as null (valid JSON)."""
    return json.dumps(_plain(obj), indent=1)


def _plain(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(float(o)) else None
    if o is None or isinstance(o, str):
        return o
    return None if pd.isna(o) else str(o)


if __name__ == "__main__":  # pragma: no cover
    main()
