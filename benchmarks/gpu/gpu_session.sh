#!/usr/bin/env bash
# One short GPU session: calibrate this GPU, then validate against real pruned models.
#
#   bash benchmarks/gpu/gpu_session.sh OUT_DIR [CALIBRATION_MINUTES] [TOTAL_SECONDS]
#
# - pis-calibrate: quick grid plus the Llama-3.1-8B shapes (the validation model's), time-boxed;
#   the profile is its own checkpoint, so rerunning this script resumes it.
# - pis-validate run --suite quick --rounds 3 on that profile (host-bound steps are noisy).
# - pis-validate run --suite full, and the GPU-marked tests, each only if the time left allows.
# Everything lands in OUT_DIR (at most 8 files, as a lent device returns them). Reports worth
# keeping go to benchmarks/results/current/ (then: python benchmarks/tools/results_index.py --write).
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [CALIBRATION_MINUTES] [TOTAL_SECONDS]}
minutes=${2:-5}
total=${3:-540}
export PYTHONUNBUFFERED=1
mkdir -p "$out"
# The profile lives outside OUT_DIR too, so a second command on the same warm machine can
# resume or reuse it (a lent device empties OUT_DIR before every command).
work=${PIS_GPU_WORK:-/tmp/pis-gpu}
mkdir -p "$work"
prof="$work/gpu.parquet"
left() { local n=$(( total - SECONDS )); echo $(( n > 1 ? n : 1 )); }

{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu,memory.used,memory.total --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  command -v pis-calibrate >/dev/null ||
    python3 -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2 ||
    python3 -m pip install --quiet --no-deps --no-build-isolation . 2>&1 | tail -2
  time pis-calibrate --device cuda:0 --grid quick --model llama-3.1-8b --out "$prof" \
      --time-budget "$minutes" --no-progress
  pis-profile info "$prof"
} 2>&1 | tee "$out/calibrate.log"
cp "$prof" "$out/"

echo "== quick suite ($(left) s left)"
timeout $(left) pis-validate run --device cuda:0 --profile "$prof" --suite quick --rounds 3 \
    --out "$out/validate_quick.csv" 2>&1 | tee "$out/validate_quick.log"

if (( $(left) > 200 )); then
  echo "== full suite ($(left) s left)"
  timeout $(( $(left) - 60 )) pis-validate run --device cuda:0 --profile "$prof" --suite full \
      --out "$out/validate_full.csv" 2>&1 | tee "$out/validate_full.log"
fi

if (( $(left) > 40 )); then
  echo "== GPU tests ($(left) s left)"
  timeout $(left) python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_calibrate.py tests/test_validate.py 2>&1 | tail -15 | tee "$out/pytest_gpu.log"
fi
echo "== done after ${SECONDS} s"
