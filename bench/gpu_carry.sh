#!/usr/bin/env bash
# Builds the git-ignored files a GPU lease carries with bench/gpu_check.sh, on a fresh machine:
#
#   .data/fashion-mnist   the Fashion-MNIST splits (train images as .xz: 64 MiB carry limit)
#   .data/wheels          deepinv 0.5.0 and natsort (the lent machine has no network, no deepinv)
#
# From the repository root: `bash bench/gpu_carry.sh` (needs the Debian package
# dataset-fashion-mnist, installed here when missing and run as root, and the package index).
# An unfinished images run's progress travels on its own: its images.partial.json is tracked
# (DPFAST_GPU_IMAGES_FROM=<its folder>; docs/full_run's run finished on 2026-11-30). A training checkpoint to continue (.data/gpu_from)
# cannot be rebuilt: it lived only on the machine that trained.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SOURCE=/usr/share/datasets/fashion-mnist
DATA=.data/fashion-mnist
WHEELS=.data/wheels

if [ ! -f "$SOURCE/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -qq dataset-fashion-mnist
  else
    echo "gpu_carry: $SOURCE/train-images-idx3-ubyte.gz is missing: apt-get install dataset-fashion-mnist" >&2
    exit 1
  fi
fi
mkdir -p "$DATA" "$WHEELS"
cp "$SOURCE"/t10k-images-idx3-ubyte.gz "$SOURCE"/t10k-labels-idx1-ubyte.gz "$SOURCE"/train-labels-idx1-ubyte.gz "$DATA"/
if [ ! -f "$DATA/train-images-idx3-ubyte.xz" ]; then
  gzip -dc "$SOURCE/train-images-idx3-ubyte.gz" | xz -9 >"$DATA/train-images-idx3-ubyte.xz.tmp"
  mv "$DATA/train-images-idx3-ubyte.xz.tmp" "$DATA/train-images-idx3-ubyte.xz"
fi
"$PYTHON" -m pip download --quiet --no-deps --dest "$WHEELS" deepinv==0.5.0 natsort==8.4.0
du -sh "$DATA" "$WHEELS"
