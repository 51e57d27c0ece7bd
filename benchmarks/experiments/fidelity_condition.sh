#!/usr/bin/env bash
# One fidelity condition on this CPU: calibrate, then validate against that profile, with no code
# change in between (docs/fidelity.md, "Conditions on one machine").
#
#   benchmarks/experiments/fidelity_condition.sh OUTDIR NAME GRID THREADS DTYPE LOAD SUITE ROUNDS
#
# GRID quick|default, THREADS 1|2, DTYPE fp32|bf16, LOAD 0|1 (1: a busy single-threaded Python loop
# runs beside both calibration and validation, a competing load on one core), SUITE quick|full.
# Writes OUTDIR/NAME.parquet (the profile), NAME.csv (the report), NAME.log (both commands' output).
# A rerun resumes the calibration and re-validates. Summarize with
# `python benchmarks/tools/conditions_table.py OUTDIR/*.csv`.
set -euo pipefail
if [ $# -ne 8 ]; then sed -n 2,12p "$0"; exit 2; fi
out=$1 name=$2 grid=$3 threads=$4 dtype=$5 load=$6 suite=$7 rounds=$8
mkdir -p "$out"
here=$(cd "$(dirname "$0")/../.." && pwd)
log="$out/$name.log"
if [ "$load" = 1 ]; then
    python -c 'while True: pass' &
    loadpid=$!
    trap 'kill $loadpid 2>/dev/null || true' EXIT
fi
{
    echo "# condition $name: grid=$grid threads=$threads dtype=$dtype load=$load suite=$suite rounds=$rounds"
    echo "# started $(date -u +%FT%TZ) on $(python -c 'import platform; print(platform.node())')"
    cmd_cal=(pis-calibrate --device cpu --grid "$grid" --model "$here/benchmarks/cpu-small.json"
             --threads "$threads" --dtype "$dtype" --out "$out/$name.parquet" --no-progress)
    cmd_val=(pis-validate --device cpu --profile "$out/$name.parquet" --suite "$suite" --rounds "$rounds"
             --threads "$threads" --dtype "$dtype" --out "$out/$name.csv" --force)
    echo "\$ ${cmd_cal[*]}"
    /usr/bin/time -f "calibration wall %e s" "${cmd_cal[@]}"
    echo "\$ ${cmd_val[*]}"
    /usr/bin/time -f "validation wall %e s" "${cmd_val[@]}" 2> >(grep -v 'config/s\|it/s' >&2)
    echo "# finished $(date -u +%FT%TZ)"
} >"$log" 2>&1
