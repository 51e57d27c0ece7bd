#!/usr/bin/env bash
# The prepared GPU checks of the open GPU issues, one stage per device command (each under 9 min).
#
#   bash benchmarks/gpu/h200_session.sh OUT_DIR STAGE [TOTAL_SECONDS]
#
# STAGE:
#   quant      calibrate the quantized GEMMs (gemm_fp8, gemm_w8, gemm_w4 at the Llama-3.1-8B widths)
#              and validate dense and pruned models with fp8, int8 and int4 weights against them
#   study      calibrate graph execution's kernels (fused RMSNorm/RoPE, in-place KV write, tile-skipping
#              block-sparse attention, searched 2:4, the graph-replayed decoder) and run the full graph
#              suite (39 configurations: every family, prefill S = 1024 and decode at contexts 4096 and
#              32768, B = 1, 8, 32 for dense)
#   calibrate  one time-boxed slice of this GPU's default-grid profile (resumable: carry the file back
#              in as benchmarks/results/gpu/base.parquet and run the stage again)
#
# Every stage first extends the base profile of this GPU (default grid plus the model's widths,
# importance-ordered: decode's ops first) for a share of its time, so predictions have the native
# rows they compose with; a profile carried in as benchmarks/results/gpu/base.parquet is resumed.
# Everything lands in OUT_DIR: profiles, reports, logs (at most 8 files).
#
# Dry run on a CPU (checks the script, not the GPU): DEVICE=cpu GRID=tiny SUITE=tiny bash ... OUT quant 120
# (the study stage's graph suite then stops at its one-line "needs CUDA" error, as it should).
set -uo pipefail
out=${1:?usage: h200_session.sh OUT_DIR quant|study|calibrate [TOTAL_SECONDS]}
stage=${2:?usage: h200_session.sh OUT_DIR quant|study|calibrate [TOTAL_SECONDS]}
total=${3:-510}
device=${DEVICE:-cuda:0}
grid=${GRID:-default}
suite=${SUITE:-full}
model=${MODEL:-llama-3.1-8b}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
work=${PIS_GPU_WORK:-/tmp/pis-gpu}
mkdir -p "$work"
base="$work/base.parquet"
carried=benchmarks/results/gpu/base.parquet
[ -f "$carried" ] && [ ! -f "$base" ] && cp "$carried" "$base"
left() { local n=$(( total - SECONDS )); echo $(( n > 1 ? n : 1 )); }
minutes() { python3 -c "print(max(0.2, $1 / 60))"; }  # seconds -> --time-budget minutes

{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,memory.used,memory.total --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  command -v pis-calibrate >/dev/null ||
    python3 -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2
} 2>&1 | tee "$out/session.log"

# The ops each stage calibrates on top of the base profile, and its share of the time for them.
case "$stage" in
  quant) only=gemm_fp8,gemm_w8,gemm_w4; base_share=35; own_share=30 ;;
  study) only=fill,rmsnorm_fused,rope_fused,kv_write,attn_block_sparse,gemm_2to4_graph,dense_decoder_graph
         base_share=20; own_share=30 ;;
  calibrate) only=""; base_share=90; own_share=0 ;;
  *) echo "unknown stage $stage (quant, study or calibrate)"; exit 2 ;;
esac

echo "== base profile of this device, $(( total * base_share / 100 )) s" | tee -a "$out/session.log"
pis-calibrate --device "$device" --grid "$grid" --model "$model" --out "$base" \
    --time-budget "$(minutes $(( total * base_share / 100 )))" --no-progress 2>&1 | tail -3 | tee -a "$out/session.log"
cp "$base" "$out/base.parquet"
prof="$base"
if [ -n "$only" ]; then
  echo "== $stage ops: $only, $(( total * own_share / 100 )) s" | tee -a "$out/session.log"
  pis-calibrate --device "$device" --grid "$grid" --model "$model" --only "$only" --out "$work/$stage.parquet" \
      --time-budget "$(minutes $(( total * own_share / 100 )))" --no-progress 2>&1 | tail -3 | tee -a "$out/session.log"
  cp "$work/$stage.parquet" "$out/$stage.parquet"
  pis-profile merge "$base" "$work/$stage.parquet" --out "$work/merged-$stage.parquet" --force 2>&1 | tee -a "$out/session.log"
  prof="$work/merged-$stage.parquet"
fi
pis-profile info "$prof" 2>&1 | head -40 >> "$out/session.log"

case "$stage" in
  quant)
    echo "== quantized validation ($(left) s left)" | tee -a "$out/session.log"
    timeout "$(left)" pis-validate run --device "$device" --profile "$prof" --suite tiny --allow-roofline \
        --weights native,fp8,int8,int4 --out "$out/validate_quant.csv" --force 2>&1 \
        | grep -v 'config/s' | tee "$out/validate_quant.log" ;;
  study)
    echo "== graph suite ($(left) s left)" | tee -a "$out/session.log"
    timeout "$(left)" pis-validate run --device "$device" --profile "$prof" --suite "$suite" --execution graph \
        --weights native --allow-roofline --out "$out/validate_graph.csv" --force 2>&1 \
        | grep -v 'config/s' | tee "$out/validate_graph.log" ;;
esac
echo "== done after ${SECONDS} s" | tee -a "$out/session.log"
