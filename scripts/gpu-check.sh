#!/usr/bin/env bash
# The GPU checks of the foundation and token-wise swapping issues, for a lent
# H100/H200, in parts that each fit one 10-minute device call (the machine
# keeps build/ between calls while it stays warm, so later parts reuse it):
#   build   configure and build against the machine's CUDA torch (deps from
#           .carry, see scripts/prepare-carry.sh) and run the tests
#   train   the Llama-3-8B shape cut to 4 layers at 32K and 64K tokens, keep
#           and recompute (issue 2)
#   bench   memo bench at 64K and 128K, every policy, with traces (issue 3)
#   anchor  the anchor probe (../shared/probes/gpu_anchor.py) in the same
#           call as a keep row of ours, for the side-by-side of issue 2
#   sync    the steps of every policy under c10's sync-debug mode "error"
#           (tests/test_sync_free_step.cpp; also part of build's ctest)
# Every part builds first if build/memo is missing. Results go to $OUT.
# Usage (device tool): carry [".carry"], command "bash scripts/gpu-check.sh PART".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memo-gpu}
part=${1:-build}
mkdir -p "$OUT"
TORCH_PREFIX=$(python3 -W ignore -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee "$OUT/commit.txt"

build() {
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PWD/.carry;$TORCH_PREFIX" > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  cmake --build build -j 16 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
}
[[ -x build/memo ]] || build

case "$part" in
  build)
    build
    (cd build && OMP_NUM_THREADS=4 ctest -j 8 --output-on-failure > "$OUT/ctest.log" 2>&1); tail -3 "$OUT/ctest.log" ;;
  train)
    for seq in 32768 65536; do
      for policy in keep recompute; do
        build/memo train --model llama3-8b --layers 4 --seq-len $seq --batch 1 --steps 5 --warmup 1 \
          --policy $policy --log-every 1 --json "$OUT/train_${policy}_${seq}.json" 2>&1 | tail -4
      done
    done ;;
  bench)
    # Issue 3's targets: memo vs keep at 64K, memo vs recompute at 128K (keep OOMs there).
    for seq in 65536 131072; do
      build/memo bench --model llama3-8b --layers 4 --seq-len $seq --batch 1 --steps 3 \
        --json "$OUT/bench_${seq}.json" --trace "$OUT/trace_${seq}" 2>&1 | tail -6
    done ;;
  anchor)
    build/memo bench --model llama3-8b --layers 4 --seq-len 65536 --batch 1 --steps 3 --policies keep,recompute \
      --json "$OUT/bench_anchor_side.json" 2>&1 | tail -4
    if [[ -f .carry/probes/gpu_anchor.py ]]; then
      BUDGET_S=${BUDGET_S:-240} OUT="$OUT" python3 .carry/probes/gpu_anchor.py > "$OUT/anchor.log" 2>&1
      tail -25 "$OUT/anchor.log"
    else
      echo "no .carry/probes/gpu_anchor.py: run scripts/prepare-carry.sh first"
    fi ;;
  sync)
    cmake --build build -j 16 --target memo_tests > "$OUT/build_tests.log" 2>&1 || { tail -40 "$OUT/build_tests.log"; exit 1; }
    OMP_NUM_THREADS=4 build/tests/memo_tests --gtest_filter='SyncCheck.*:*SyncFreeStep*:*ChunkedLoss*:FusedAdamW.*' \
      2>&1 | tee "$OUT/sync.log" | tail -25 ;;
  *) echo "usage: $0 build|train|bench|anchor|sync"; exit 2 ;;
esac
