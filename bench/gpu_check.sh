#!/usr/bin/env bash
# GPU checks for dpfast, run from anywhere on a machine with a CUDA GPU and a Python
# environment that already holds torch (CUDA build), triton, pytest, pytest-benchmark and
# ninja. A plain sequence of sections; each records pass/fail, none stops the others,
# and a short table is printed last.
#
#   bash bench/gpu_check.sh            # PYTHON=... to pick the interpreter
#
# Everything is written under $DPFAST_GPU_RESULTS (default /tmp/dpfast_gpu_check). Where
# $OUT is set (the lent GPU machine, which sends back at most 8 files of 16 MiB), it
# receives gpu_check.tar.gz (logs, tables, JSON, the training log and the exported EMA
# weights) and the training checkpoint split into 15 MiB parts (checkpoint.pt.part-aa ...).
#
# Time: the run ends by itself near DPFAST_GPU_DEADLINE seconds (default 540): each
# section runs under a timeout cut to what is left, and a section with too little left is
# skipped and says so. DPFAST_GPU_SECTIONS picks sections (default: all, in this order):
#   install environment kernel_tests sanitizer sampler_tests sampler_bench compile_bench network_bench kernel_bench images_full train
#
# Training (section "train"): the built-in model trains in the background *while the
# untimed correctness sections run* (it is stopped before any benchmark), and again after
# the benchmarks until the deadline. It needs the Fashion-MNIST training files in
# $DPFAST_FASHION_MNIST_DIR (default .data/fashion-mnist, git-ignored; carry it with the
# run): train-images-idx3-ubyte.gz, or the same file as .xz (smaller, to fit a 64 MiB
# carry limit; converted here), and train-labels-idx1-ubyte.gz. DPFAST_GPU_TRAIN_FROM=DIR
# continues an earlier run: DIR holds its checkpoint.pt (or checkpoint.pt.part-* to be
# joined) and optionally its log.csv. The recipe is the CPU run's (batch 64, fp32, lr 2e-4);
# the data order depends only on (seed, step), so the continued run takes the same steps.
# DPFAST_GPU_TRAIN_INIT=WEIGHTS (e.g. "builtin") starts a run that has no checkpoint from
# those exported weights instead of a random network (`dpfast.train --init-from`).
#
# The full images experiment (section "images_full", issue #6: 256 held-out test images,
# 100 steps, five tasks; `dpfast reproduce images --device cuda`) needs the test split too
# (t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) in the same folder. It writes
# images.partial.json after every phase of every task (all λ sweeps, DPS then x̂0-guided, then the baselines);
# DPFAST_GPU_IMAGES_FROM=DIR (holding an earlier run's images.partial.json) carries on from
# there, so a run cut by the deadline loses one phase of one task; it is copied only where
# this machine holds no images.partial.json yet (a second call on a warm machine keeps the
# one the first call grew). Its stored chain pieces (images.pieces/, tens of MB) are left
# out of the returned archive; the pieces this call computed come back beside it as
# images_pieces.tar.part-* (15 MiB parts; what comes back is capped by the tool's file
# count, so only as many parts as fit — a cut tar still holds the pieces before the cut).
# To merge them on the machine that runs the rest: stop that run, then
# `cat images_pieces.tar.part-* | tar xf - -C docs/full_run/images.pieces`, overwriting: the
# returned partial file's finished phases were computed from these pieces, and pieces the
# other machine computed meanwhile for the same phases must give way to them.
# DPFAST_GPU_IMAGES_PIECES_FROM=DIR (a folder of an earlier run's pieces, laid out as
# images.pieces/ is) starts from those, keeping pieces already here: a phase that reuses
# another's chains (averaging takes the λ sweep's λ = 1 draw) then does not recompute them.
# DPFAST_GPU_IMAGES_TEST=0 leaves out the small CUDA images test (for a second call on a
# warm machine).
# deepinv's baselines need its wheel (and natsort's) carried in .data/wheels (see "install").
# bench/gpu_carry.sh builds both .data folders on a fresh machine.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=${DPFAST_GPU_RESULTS:-/tmp/dpfast_gpu_check}
DEADLINE=${DPFAST_GPU_DEADLINE:-540}
SECTIONS=" ${DPFAST_GPU_SECTIONS:-install environment kernel_tests sanitizer sampler_tests sampler_bench compile_bench network_bench kernel_bench images_full train} "
RESERVE=25  # seconds kept for stopping the trainer, exporting and packing
mkdir -p "$RESULTS"
# Triton must compile for the GPU here, not interpret (tests/conftest.py defaults it to 1).
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
SUMMARY=()
START=$SECONDS

section() { echo; echo "=== $1 ($((SECONDS - START)) s) ==="; }
wanted() { [[ "$SECTIONS" == *" $1 "* ]]; }
record() { SUMMARY+=("$1|$2|$3"); }  # name, status, seconds
left() { echo $((DEADLINE - RESERVE - (SECONDS - START))); }
timed() {  # timed NAME CAP COMMAND...: run under a timeout of min(CAP, time left); record status and wall time
  local name=$1 cap=$2 start=$SECONDS status limit
  shift 2
  limit=$(left)
  [ "$cap" -lt "$limit" ] && limit=$cap
  if [ "$limit" -lt 20 ]; then
    echo "skipped: $limit s left before the deadline"
    record "$name" "skipped (time)" 0
    return 0
  fi
  timeout -s INT -k 15 "$limit" "$@"
  status=$?
  case $status in
    0) record "$name" pass "$((SECONDS - start))" ;;
    124|137) record "$name" "TIMEOUT ${limit}s" "$((SECONDS - start))" ;;
    *) record "$name" "FAIL ($status)" "$((SECONDS - start))" ;;
  esac
  return $status
}

# ------------------------------------------------------------------ training, in the background
TRAIN_DIR=$RESULTS/builtin_run
TRAIN_PID=
TRAIN_SECONDS=0
export DPFAST_FASHION_MNIST_DIR=${DPFAST_FASHION_MNIST_DIR:-.data/fashion-mnist}
fashion_mnist_ready() {  # fashion_mnist_ready SPLIT_PREFIX: its images as .gz (converted from .xz if need be)
  local data=$DPFAST_FASHION_MNIST_DIR/$1-images-idx3-ubyte
  if [ ! -f "$data.gz" ] && [ -f "$data.xz" ]; then
    "$PYTHON" -c "import gzip, lzma, shutil, sys
with lzma.open(sys.argv[1]) as source, gzip.open(sys.argv[2], 'wb', compresslevel=1) as target:
    shutil.copyfileobj(source, target, 1 << 24)" "$data.xz" "$data.gz" || return 1
  fi
  [ -f "$data.gz" ] || { echo "no $data.gz (or .xz)"; return 1; }
}
train_ready() {
  fashion_mnist_ready train || { echo "training skipped"; return 1; }
  mkdir -p "$TRAIN_DIR"
  local from=${DPFAST_GPU_TRAIN_FROM:-}
  if [ -n "$from" ] && [ ! -f "$TRAIN_DIR/checkpoint.pt" ]; then
    if [ -f "$from/checkpoint.pt" ]; then
      cp "$from/checkpoint.pt" "$TRAIN_DIR/"
    else
      cat "$from"/checkpoint.pt.part-* >"$TRAIN_DIR/checkpoint.pt" || return 1
    fi
    [ -f "$from/log.csv" ] && cp "$from/log.csv" "$TRAIN_DIR/"
    echo "continuing the run in $from"
  fi
}
train_start() {
  TRAIN_STARTED=$SECONDS
  "$PYTHON" -m dpfast.train --out "$TRAIN_DIR" --steps 30000 --batch 64 --device "${DPFAST_GPU_TRAIN_DEVICE:-cuda}" --precision fp32 \
    --threads 4 --checkpoint-minutes 1 --log-every 200 ${DPFAST_GPU_TRAIN_INIT:+--init-from "$DPFAST_GPU_TRAIN_INIT"} \
    >>"$RESULTS/train.log" 2>&1 &
  TRAIN_PID=$!
  echo "training in the background (pid $TRAIN_PID)"
}
train_stop() {  # SIGTERM: the trainer finishes its step, checkpoints and exits
  [ -n "$TRAIN_PID" ] || return 0
  kill -TERM "$TRAIN_PID" 2>/dev/null
  wait "$TRAIN_PID"
  TRAIN_SECONDS=$((TRAIN_SECONDS + SECONDS - TRAIN_STARTED))
  TRAIN_PID=
  tail -n 2 "$RESULTS/train.log"
}
TRAINING=0
if wanted train; then
  section "training data"
  train_ready && TRAINING=1 && train_start
fi

# ------------------------------------------------------------------ correctness (untimed)
if wanted install; then
  section "install (compiles the C++ and CUDA extensions)"
  timed install 300 "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$RESULTS/install.log" 2>&1
  tail -n 5 "$RESULTS/install.log"
  # deepinv (the benchmarks' and the images experiment's baseline) is not on the GPU image and
  # there is no network: wheels carried in $DPFAST_GPU_WHEELS (deepinv and natsort, --no-deps;
  # its other requirements are on the image) install it.
  WHEELS=${DPFAST_GPU_WHEELS:-.data/wheels}
  if ls "$WHEELS"/*.whl >/dev/null 2>&1 && ! "$PYTHON" -c "import deepinv" 2>/dev/null; then
    if "$PYTHON" -m pip install --no-deps --no-index "$WHEELS"/*.whl >"$RESULTS/wheels.log" 2>&1 && "$PYTHON" -c "import deepinv"; then
      echo "deepinv installed from $WHEELS"
    else
      echo "deepinv from $WHEELS did not install or import (its baselines are skipped): $RESULTS/wheels.log"
    fi
  fi
fi

if wanted environment; then
  section "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
  "$PYTHON" - <<'EOF' 2>&1 | tee "$RESULTS/environment.txt"
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
fi

if wanted kernel_tests; then
  section "CUDA kernel tests (the CPU ones run in CI)"
  timed kernel_tests 180 "$PYTHON" -m pytest tests/kernels -q -rs -p no:cacheprovider -k cuda --junitxml="$RESULTS/kernel_tests.xml"
fi

if wanted sanitizer; then
  section "compute-sanitizer memcheck on some CUDA kernel tests"
  if command -v compute-sanitizer >/dev/null 2>&1; then
    timed sanitizer 90 compute-sanitizer --tool memcheck --error-exitcode 1 --target-processes all \
      "$PYTHON" -m pytest tests/kernels/test_reverse_step.py tests/kernels/test_dps_update.py -q -p no:cacheprovider \
      -k "cuda-cuda and (image_odd or vector or image_superres or chain_ends or non_contiguous)"
  else
    echo "compute-sanitizer not found; skipped"
    record sanitizer skipped 0
  fi
fi

if wanted sampler_tests; then
  section "sampler on CUDA (cudagraph equals eager, DPS and x̂0; bf16 over 1000 steps finite, near fp32, flat memory; graph pool in the peak)"
  timed sampler_tests 150 "$PYTHON" -m pytest tests/test_sampler_modes.py tests/test_benchmark.py -q -rs -p no:cacheprovider -k cudagraph
fi

# ------------------------------------------------------------------ benchmarks (the GPU to themselves)
benchmarks_wanted() {
  local name
  for name in sampler_bench compile_bench network_bench kernel_bench images_full; do wanted "$name" && return 0; done
  return 1
}
if [ "$TRAINING" = 1 ] && benchmarks_wanted; then  # with none, the trainer keeps running to the deadline
  section "pausing training for the benchmarks"
  train_stop
fi

cuda_bench() {  # cuda_bench NAME CAP MODULE [VAR=VALUE ...]: bench/MODULE on CUDA; table and JSON as $RESULTS/NAME.*
  local name=$1 cap=$2 module=$3
  shift 3
  timed "$name" "$cap" env DPFAST_BENCH_DEVICE=cuda DPFAST_BENCH_TABLE="$RESULTS/$name.md" "$@" \
    "$PYTHON" -m pytest "bench/$module" -q -p no:cacheprovider \
    --benchmark-columns=min,median,rounds --benchmark-json="$RESULTS/$name.json"
  TABLES+=("$RESULTS/$name.md")
}
TABLES=()

if wanted sampler_bench; then
  section "sampler benchmarks on CUDA (FFHQ-256 ADM random weights b1/b8, Fashion-MNIST b64; naive loop; deepinv if installed)"
  cuda_bench sampler_bench 240 bench_sampler.py
fi

if wanted compile_bench; then
  section "compiled step on CUDA (FFHQ-256 b8: compile-bf16 beside naive-fp32 and cudagraph-bf16; compile time reported)"
  cuda_bench compile_bench 300 bench_sampler.py \
    DPFAST_BENCH_PROVIDERS=naive-fp32,cudagraph-bf16,compile-bf16 DPFAST_BENCH_WORKLOADS=adm-ffhq256-3x256x256-b8
fi

if wanted network_bench; then
  section "the network alone on CUDA (FFHQ-256 b8 forward+VJP: fp32/bf16 x NCHW/channels_last x cuDNN heuristic/autotuned)"
  cuda_bench network_bench 150 bench_network.py
fi

if wanted kernel_bench; then
  section "kernel benchmarks on CUDA (eager torch vs cuda vs triton vs device-to-device copy)"
  cuda_bench kernel_bench 120 bench_kernels.py
fi

# ------------------------------------------------------------------ the full images experiment
if wanted images_full; then
  section "images experiment, full size, on CUDA (256 held-out test images, 100 steps, five tasks; resumable)"
  if fashion_mnist_ready train && fashion_mnist_ready t10k; then
    mkdir -p "$RESULTS/images"
    if [ -f "$RESULTS/images/images.partial.json" ]; then
      echo "carrying on from this machine's $RESULTS/images/images.partial.json"
    elif [ -n "${DPFAST_GPU_IMAGES_FROM:-}" ] && [ -f "$DPFAST_GPU_IMAGES_FROM/images.partial.json" ]; then
      cp "$DPFAST_GPU_IMAGES_FROM/images.partial.json" "$RESULTS/images/" && echo "carrying on from $DPFAST_GPU_IMAGES_FROM"
    fi
    if [ -n "${DPFAST_GPU_IMAGES_PIECES_FROM:-}" ]; then
      mkdir -p "$RESULTS/images/images.pieces"
      (cd "$DPFAST_GPU_IMAGES_PIECES_FROM" && find . -name '*.pt' -print0) | while IFS= read -r -d '' piece; do
        [ -e "$RESULTS/images/images.pieces/$piece" ] && continue
        mkdir -p "$(dirname "$RESULTS/images/images.pieces/$piece")"
        cp "$DPFAST_GPU_IMAGES_PIECES_FROM/$piece" "$RESULTS/images/images.pieces/$piece"
      done
      echo "pieces from $DPFAST_GPU_IMAGES_PIECES_FROM: $(find "$RESULTS/images/images.pieces" -name '*.pt' | wc -l) stored"
    fi
    touch "$RESULTS/images_started"  # the pieces newer than this were computed by this call
    if [ "${DPFAST_GPU_IMAGES_TEST:-1}" != 0 ]; then
      timed images_test 120 "$PYTHON" -m pytest tests/experiments/test_experiment_images.py -q -rs -p no:cacheprovider -k cuda
    fi
    timed images_full 900 "$PYTHON" -m dpfast.experiments images --device cuda -o "$RESULTS/images" >"$RESULTS/images.log" 2>&1
    grep -E "^\[images\]|done in" "$RESULTS/images.log" | tail -n 30
  else
    echo "images_full skipped: the Fashion-MNIST train and t10k files are needed in $DPFAST_FASHION_MNIST_DIR"
    record images_full "skipped (no data)" 0
  fi
fi

# ------------------------------------------------------------------ training until the deadline
if [ "$TRAINING" = 1 ]; then
  section "training until the deadline"
  if [ -n "$TRAIN_PID" ] || [ "$(left)" -gt 30 ]; then  # still running (no benchmark paused it), or worth a restart
    [ -n "$TRAIN_PID" ] || train_start
    while kill -0 "$TRAIN_PID" 2>/dev/null && [ "$(left)" -gt 0 ]; do sleep 2; done
    train_stop
  fi
  if "$PYTHON" -m dpfast.train --out "$TRAIN_DIR" --export "$RESULTS/builtin_fmnist.safetensors"; then
    record train "pass ($(grep -o 'at step [0-9]*' "$RESULTS/train.log" | tail -n 1))" "$TRAIN_SECONDS"
  else
    record train FAIL "$TRAIN_SECONDS"
  fi
  grep -E "^(resumed|starting|training|saved)" "$RESULTS/train.log"
fi

# ------------------------------------------------------------------ back to the caller
if [ -n "${OUT:-}" ] && [ "$OUT" != "$RESULTS" ]; then
  tar czf "$OUT/gpu_check.tar.gz" -C "$RESULTS" --exclude=checkpoint.pt --exclude=images.pieces .
  if [ -f "$TRAIN_DIR/checkpoint.pt" ]; then
    split -b 15M "$TRAIN_DIR/checkpoint.pt" "$OUT/checkpoint.pt.part-"
  fi
  if wanted images_full && [ -f "$RESULTS/images_started" ] && [ -d "$RESULTS/images/images.pieces" ]; then
    (cd "$RESULTS/images/images.pieces" && find . -name '*.pt' -newer "$RESULTS/images_started" -print0) >"$RESULTS/new_pieces"
    if [ -s "$RESULTS/new_pieces" ]; then
      (cd "$RESULTS/images/images.pieces" && tar cf - --null -T "$RESULTS/new_pieces") | split -b 15M - "$OUT/images_pieces.tar.part-"
      echo "images pieces computed here: $(tr -cd '\0' <"$RESULTS/new_pieces" | wc -c), in $(ls "$OUT"/images_pieces.tar.part-* | wc -l) part(s) of 15 MiB"
    fi
  fi
  ls -la "$OUT"
fi

section "summary"
printf '%-14s %-18s %8s\n' section status seconds
for row in "${SUMMARY[@]}"; do
  IFS='|' read -r name status seconds <<<"$row"
  printf '%-14s %-18s %8s\n' "$name" "$status" "$seconds"
done
for table in "${TABLES[@]}"; do
  if [ -f "$table" ]; then
    echo
    cat "$table"
  fi
done
