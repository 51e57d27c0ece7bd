"""What ``pis-simulate`` and ``pis-pareto`` share: their sweep options, parsing, and output writing."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from pis.errors import PisError
from pis.models import PRESETS, ModelSpec, load_model
from pis.profiles.schema import QUANTIZED_GEMM
from pis.pruned import EXECUTIONS, OP_GRAPHS, VARIANT_NAMES, PruneOptions, weight_format
from pis.simulator.api import Simulator
from pis.simulator.points import PHASES
from pis.simulator.pruning import FAMILIES, check_methods
from pis.simulator.sweep import Columns, concat_columns


def split_list(text: str, what: str, convert: Callable[[str], Any]) -> list[Any]:
    """Parse a comma list (``"0,0.25"``) with one clear error naming the option."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise PisError(f"{what}: empty list")
    out = []
    for t in items:
        try:
            out.append(convert(t))
        except ValueError:
            raise PisError(f"{what}: {t!r} is not a valid value") from None
    return out


def positive_int(t: str) -> int:
    """A positive integer from the command line (ValueError otherwise)."""
    v = int(t)
    if v <= 0:
        raise ValueError(t)
    return v


def sparsity_value(t: str) -> float:
    """A sparsity in [0, 1) from the command line."""
    v = float(t)
    if not (math.isfinite(v) and 0.0 <= v < 1.0):
        raise PisError(f"--sparsity: {t} is outside [0, 1)")
    return v


def parse_methods(text: str) -> list[str]:
    """`all` or a comma list of family names; unknown names are an error listing the families."""
    if text.strip() == "all":
        return list(FAMILIES)
    methods = split_list(text, "--method", str)
    check_methods(methods)
    return methods


def parse_layer_sparsity(path: str | None) -> tuple[float, ...] | None:
    """Read one sparsity per layer (whitespace, comma or newline separated; # comments)."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise PisError(f"--layer-sparsity: file {path} does not exist")
    text = "\n".join(line.split("#", 1)[0] for line in p.read_text(errors="replace").splitlines())
    tokens = text.replace(",", " ").split()
    try:
        values = tuple(float(t) for t in tokens)
    except ValueError:
        raise PisError(f"--layer-sparsity: {path} must hold one number per layer") from None
    if not values:
        raise PisError(f"--layer-sparsity: {path} holds no values")
    return values


def sweep_options(func: Callable) -> Callable:
    """Options shared by `pis-simulate` and `pis-pareto`."""
    opts = [
        click.option("--profile", "profile", default=None, metavar="FILE|NAME",
                     help="Latency profile (Parquet from pis-calibrate) or the name of a shipped "
                          "profile. Default: the embedded profile (see `pis-profile info`)."),
        click.option("--model", "model", default="llama-3.1-8b", show_default=True,
                     help=f"Comma list of presets ({', '.join(PRESETS)}) or paths to Hugging Face "
                          "config.json files."),
        click.option("--batch", default="1", show_default=True, help="Comma list of batch sizes."),
        click.option("--seq-len", default="1024", show_default=True,
                     help="Comma list of prompt lengths (prefill)."),
        click.option("--context", default="4096", show_default=True,
                     help="Comma list of KV-cache lengths (tokens already cached) for one decode step."),
        click.option("--granularity", type=click.Choice(["layer", "sublayer"]), default="layer",
                     show_default=True, help="static-depth: drop whole layers or attention/MLP sublayers."),
        click.option("--align", type=click.IntRange(1, 4096), default=64, show_default=True,
                     help="Width pruning and low-rank ranks round to a multiple of this."),
        click.option("--layer-sparsity", type=click.Path(dir_okay=False), default=None,
                     help="File with one sparsity per layer (non-uniform pruning); replaces --sparsity."),
        click.option("--execution", type=click.Choice(list(EXECUTIONS)), default=None,
                     help="How a step runs. graph: the whole step replays as one CUDA graph, with fused "
                          "RMSNorm and RoPE, the KV cache written in place and the LM head on every "
                          "prompt token (the study's PruningInferSim, and serving engines). eager: "
                          "PyTorch issues every op from Python (Hugging Face generate): per-op launches "
                          "and the host's dispatch cost count. Default: graph on GPU profiles, eager on "
                          "CPU profiles."),
        click.option("--op-graph", type=click.Choice(list(OP_GRAPHS)), default=None,
                     help="Whose op graphs the families follow: study (the study's framework: KV-group "
                          "width, masked routing, tile-skipping sparse attention, 2:4 on every layer) "
                          "or pis (pis-validate's executors: query-head width, gather routing, gathered "
                          "KV blocks, 2:4 on a fraction 2s of the layers). Default: study under graph "
                          "execution, pis under eager. simulator/FAMILIES.md compares them."),
        click.option("--variant", "variant", multiple=True, metavar="FAMILY=NAME",
                     help="One family's op graph, overriding --op-graph: "
                          + "; ".join(f"{f}={a}|{b}" for f, (a, b) in VARIANT_NAMES.items())
                          + " (or =study / =pis). Repeatable, or comma-separated."),
        click.option("--weights", default="native", show_default=True, metavar="LIST",
                     help="Comma list of weight formats, each a sweep of its own: native (the profile's "
                          "dtype; bf16, fp16 and fp32 name it too), fp8, int8 or int4 (weight-only int8 "
                          "and int4, per-token fp8 activations with fp8). Every family's decoder GEMMs "
                          "take the format; the LM head, routers, attention and 2:4 GEMMs keep the "
                          "activation dtype. Speedups are against the unpruned model with native weights. "
                          "Formats the profile never timed are priced by roofline and flagged."),
        click.option("--group-size", type=click.IntRange(1, 65536), default=128, show_default=True,
                     help="int4: weights per scale and zero along K."),
        click.option("--quantize-head", is_flag=True, help="Quantize the LM head's weights too."),
        click.option("--kv-cache", type=click.Choice(["concat", "preallocated"]), default=None,
                     help="Decode KV cache: concat copies each layer's cache per step (Hugging Face "
                          "DynamicCache, eager only); preallocated writes in place (static/paged "
                          "caches). Default: concat eager, preallocated under graph execution."),
        click.option("--op-sum", "op_sum", is_flag=True,
                     help="Report plain sums of per-op times (on a GPU: kernel time), without the "
                          "in-model correction fitted to the profile's whole decoders (column "
                          "in_model_factor = latency / op sum)."),
        click.option("--allow-roofline", is_flag=True,
                     help="Estimate ops missing from the profile (e.g. 2:4 GEMMs on a CPU profile) "
                          "by roofline instead of failing; such results are flagged extrapolated."),
        click.option("--jobs", type=click.IntRange(1, 256), default=1, show_default=True,
                     help="Parallel workers (joblib) across models × phases × methods."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


@dataclass(frozen=True)
class Grid:
    """The design space the sweep options describe, parsed and checked."""

    models: list[ModelSpec]
    batches: list[int]
    seq_lens: list[int]
    contexts: list[int]
    options: PruneOptions
    #: the weight formats, each a sweep of its own (``options.weights`` is the first)
    weights: tuple[str, ...] = ("native",)

    def each_format(self) -> list[PruneOptions]:
        """The pruning options once per weight format."""
        return [replace(self.options, weights=w) for w in self.weights]


def parse_weights(text: str, profile_dtype: str | None = None) -> tuple[str, ...]:
    """``--weights`` as canonical formats (:data:`pis.pruned.WEIGHT_FORMATS`), duplicates dropped.

    bf16, fp16 and fp32 name the native format (unquantized weights in the activation dtype);
    naming one that is not the profile's dtype prints a note, since the profile prices its own.
    """
    out: list[str] = []
    for given in split_list(text, "--weights", str):
        name = weight_format(given)
        given = given.lower()
        if name == "native" and given != "native" and profile_dtype is not None and given != profile_dtype:
            click.echo(f"note: --weights {given}: the profile was calibrated in {profile_dtype}, so "
                       f"unquantized weights are priced as {profile_dtype}", err=True)
        if name not in out:
            out.append(name)
    return tuple(out)


def parse_variants(items: "tuple[str, ...] | list[str]") -> tuple[tuple[str, str], ...]:
    """``--variant FAMILY=NAME`` values (repeated or comma-separated) as (family, name) pairs."""
    out = []
    for item in (p.strip() for text in items for p in str(text).split(",") if p.strip()):
        family, eq, name = item.partition("=")
        if not eq:
            raise PisError(f"--variant: {item!r} is not FAMILY=NAME (e.g. static-width=query-heads)")
        out.append((family.strip(), name.strip()))
    return tuple(out)


def parse_grid(model: str, batch: str, seq_len: str, context: str, granularity: str, align: int,
               layer_sparsity: str | None, kv_cache: str | None, execution: str | None = None,
               op_graph: str | None = None, variant: "tuple[str, ...]" = (), weights: "tuple[str, ...]" = ("native",),
               group_size: int = 128, quantize_head: bool = False) -> Grid:
    """The models, sizes and pruning options of the sweep options (one clear error per bad value);
    ``weights`` as :func:`parse_weights` returns them."""
    return Grid([load_model(m) for m in split_list(model, "--model", str)],
                split_list(batch, "--batch", positive_int), split_list(seq_len, "--seq-len", positive_int),
                split_list(context, "--context", positive_int),
                PruneOptions(granularity=granularity, align=align,
                             layer_sparsity=parse_layer_sparsity(layer_sparsity), kv_cache=kv_cache,
                             execution=execution, op_graph=op_graph, variants=parse_variants(variant),
                             weights=weights[0], group_size=group_size, quantize_head=quantize_head),
                tuple(weights))


def sweep_from_options(profile: str | None, model: str, method: str, sparsity: str, phase: str,
                       batch: str, seq_len: str, context: str, granularity: str, align: int,
                       layer_sparsity: str | None, allow_roofline: bool, jobs: int,
                       breakdown: bool, kv_cache: str | None = None, in_model: bool = True,
                       execution: str | None = None, op_graph: str | None = None,
                       variant: "tuple[str, ...]" = (), weights: str = "native", group_size: int = 128,
                       quantize_head: bool = False) -> tuple[Columns, Simulator]:
    """Parse the CLI's lists, validate everything, then run the sweep (once per weight format)."""
    methods = parse_methods(method)
    phases = split_list(phase, "--phase", str)
    bad = [p for p in phases if p not in PHASES]
    if bad:
        raise PisError(f"--phase: unknown phase {bad[0]!r}; use prefill and/or decode")
    sparsities = split_list(sparsity, "--sparsity", sparsity_value)
    sim = Simulator(profile, allow_roofline=allow_roofline)
    grid = parse_grid(model, batch, seq_len, context, granularity, align, layer_sparsity, kv_cache, execution,
                      op_graph, variant, parse_weights(weights, sim.estimator.dtype), group_size, quantize_head)
    if grid.options.layer_sparsity is not None:
        sparsities = [float(np.mean(grid.options.layer_sparsity))]
    sim.resolve(grid.options)  # a regime the profile cannot run is an error before any work
    if method.strip() == "all":
        methods = skip_unanswerable(methods, sim)
    note_untimed_formats(grid.weights, sim)
    cols = concat_columns([sim.columns(grid.models, methods, sparsities, phases, grid.batches, grid.seq_lens,
                                       grid.contexts, opts, breakdown, in_model, jobs) for opts in grid.each_format()])
    return cols, sim


def note_untimed_formats(weights: "tuple[str, ...]", sim: Simulator) -> None:
    """One note per quantized weight format the profile never timed (priced by roofline, flagged)."""
    for w in weights:
        if w != "native" and QUANTIZED_GEMM[w] not in sim.estimator.ops():
            click.echo(f"note: --weights {w}: the profile has no {QUANTIZED_GEMM[w]} rows; its GEMMs are priced "
                       "by roofline at the native GEMM's utilization (path roof, flag EXTRAP)", err=True)


def skip_unanswerable(methods: list[str], sim: Simulator) -> list[str]:
    """``all`` means every family the profile can answer: 2:4 needs ``gemm_2to4`` rows (naming it
    explicitly still fails loudly)."""
    answerable = sim.families()
    if "semi-structured" in methods and "semi-structured" not in answerable:
        click.echo("note: semi-structured skipped: the profile has no gemm_2to4 rows (2:4 needs a "
                   "CUDA sm80+ profile); --allow-roofline estimates it", err=True)
    return [m for m in methods if m in answerable]


def json_records(cols: Columns) -> str:
    """The columns as a JSON array of objects, one per design point (non-finite floats: null)."""
    keys = list(cols)
    n = len(cols[keys[0]]) if keys else 0
    lists = {k: cols[k].tolist() for k in keys}
    records = []
    for i in range(n):
        rec = {}
        for k in keys:
            v = lists[k][i]
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            rec[k] = v
        records.append(rec)
    return json.dumps(records, indent=1)


def check_output(fmt: str, out: str | None, force: bool) -> None:
    """Fail before any work if the output cannot be written (or would overwrite a file)."""
    if fmt == "parquet" and out is None:
        raise PisError("--format parquet needs --out FILE")
    if out is not None:
        path = Path(out)
        if path.exists() and not force:
            raise PisError(f"{out} exists; pass --force to overwrite it")
        if not path.parent.exists():
            raise PisError(f"cannot write {out}: folder {path.parent} does not exist")


def write_text(text: str, out: str | None, force: bool, what: str = "") -> None:
    """Print ``text``, or write it to ``out`` atomically (never over a file unless ``force``)."""
    if out is None:
        click.echo(text)
        return
    check_output("text", out, force)
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(path)
    click.echo(f"wrote {what or out}", err=True)
