#!/usr/bin/env bash
# GPU checks for dpfast, run from anywhere on a machine with a CUDA GPU and a Python
# environment that already holds torch (CUDA build), triton, pytest, pytest-benchmark and
# ninja. A plain sequence of sections; each records pass/fail, none stops the others,
# and a short table is printed last. Results also land in $OUT (default /tmp/dpfast_gpu_check).
#
#   bash bench/gpu_check.sh            # PYTHON=... to pick the interpreter
#
# Sections: install, environment, CUDA kernel tests, compute-sanitizer (if available),
# kernel benchmarks on CUDA, sampler-mode tests and sampler benchmarks. Add new sections with `section` + `record`.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:-/tmp/dpfast_gpu_check}
mkdir -p "$OUT"
# Triton must compile for the GPU here, not interpret (tests/conftest.py defaults it to 1).
export TRITON_INTERPRET=0
SUMMARY=()

section() { echo; echo "=== $1 ==="; }
record() { SUMMARY+=("$1|$2|$3"); }  # name, status, seconds
timed() {  # timed NAME COMMAND...: run, record status and wall time
  local name=$1 start=$SECONDS status
  shift
  "$@"
  status=$?
  record "$name" "$([ $status -eq 0 ] && echo pass || echo "FAIL ($status)")" "$((SECONDS - start))"
  return $status
}

section "install (compiles the C++ and CUDA extensions)"
timed install "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$OUT/install.log" 2>&1
tail -n 5 "$OUT/install.log"

section "environment"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
"$PYTHON" - <<'EOF'
import torch, dpfast._extension as extension
from dpfast.kernels import available_backends
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
try:
    import triton; print("triton", triton.__version__)
except ImportError as error:
    print("triton missing:", error)
print("CUDA extension:", "loaded" if extension.cuda_extension_loaded() else extension.extension_error("cuda"))
print("backends on cuda:", available_backends("cuda"))
EOF

section "kernel tests (CPU and CUDA)"
timed kernel_tests "$PYTHON" -m pytest tests/kernels -q -rs -p no:cacheprovider --junitxml="$OUT/kernel_tests.xml"

section "compute-sanitizer memcheck on the CUDA kernel tests"
if command -v compute-sanitizer >/dev/null 2>&1; then
  timed sanitizer compute-sanitizer --tool memcheck --error-exitcode 1 --target-processes all \
    "$PYTHON" -m pytest tests/kernels/test_reverse_step.py tests/kernels/test_dps_update.py -q -p no:cacheprovider \
    -k "cuda-cuda and (image_odd or vector or image_superres or chain_ends or non_contiguous)"
else
  echo "compute-sanitizer not found; skipped"
  record sanitizer skipped 0
fi

section "kernel benchmarks on CUDA (eager torch vs cuda vs triton vs device-to-device copy)"
timed benchmarks env DPFAST_BENCH_DEVICE=cuda DPFAST_BENCH_TABLE="$OUT/kernels_cuda.md" \
  "$PYTHON" -m pytest bench/bench_kernels.py -q -p no:cacheprovider \
  --benchmark-columns=min,median,rounds --benchmark-json="$OUT/kernels_cuda.json"

section "sampler modes on CUDA (eager vs compile vs cudagraph restorations, bf16 finite)"
timed sampler_tests "$PYTHON" -m pytest tests/test_sampler_modes.py -q -rs -p no:cacheprovider

section "sampler benchmarks on CUDA (FFHQ-256 ADM random weights b1/b8, Fashion-MNIST b64; naive loop; deepinv if installed)"
timed sampler_bench env DPFAST_BENCH_DEVICE=cuda DPFAST_BENCH_TABLE="$OUT/sampler_cuda.md" \
  "$PYTHON" -m pytest bench/bench_sampler.py -q -p no:cacheprovider \
  --benchmark-columns=min,median,rounds --benchmark-json="$OUT/sampler_cuda.json"

section "train the built-in model on the GPU (DPFAST_GPU_TRAIN_SECONDS, default 240; 0 skips)"
# The GPU machine has no dataset package: copy the four Fashion-MNIST .gz files into
# .data/fashion-mnist/ (git-ignored) and carry that folder with the run. The run stops
# after the time limit (SIGTERM: the trainer checkpoints and exits) and its EMA weights come
# back as $OUT/builtin_fmnist.safetensors, to compare with the shipped ones.
TRAIN_SECONDS=${DPFAST_GPU_TRAIN_SECONDS:-240}
export DPFAST_FASHION_MNIST_DIR=${DPFAST_FASHION_MNIST_DIR:-.data/fashion-mnist}
if [ "$TRAIN_SECONDS" -gt 0 ] && [ -f "$DPFAST_FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  start=$SECONDS
  timeout -s TERM "$TRAIN_SECONDS" "$PYTHON" -m dpfast.train --out "$OUT/builtin_run" --steps 30000 --batch 128 \
    --device cuda --precision auto --checkpoint-minutes 1 --log-every 200 >"$OUT/train.log" 2>&1
  tail -n 3 "$OUT/train.log"
  if "$PYTHON" -m dpfast.train --out "$OUT/builtin_run" --export "$OUT/builtin_fmnist.safetensors"; then
    record train "pass ($(tail -n 1 "$OUT/builtin_run/log.csv" | cut -d, -f1) steps)" "$((SECONDS - start))"
  else
    record train FAIL "$((SECONDS - start))"
  fi
else
  echo "skipped (DPFAST_GPU_TRAIN_SECONDS=$TRAIN_SECONDS, data in $DPFAST_FASHION_MNIST_DIR)"
  record train skipped 0
fi

section "summary"
printf '%-14s %-12s %8s\n' section status seconds
for row in "${SUMMARY[@]}"; do
  IFS='|' read -r name status seconds <<<"$row"
  printf '%-14s %-12s %8s\n' "$name" "$status" "$seconds"
done
for table in "$OUT/kernels_cuda.md" "$OUT/sampler_cuda.md"; do
  if [ -f "$table" ]; then
    echo
    cat "$table"
  fi
done
