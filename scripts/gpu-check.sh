#!/usr/bin/env bash
# The GPU check of the foundation issue, as one script for a lent H100/H200:
# build memo against the machine's CUDA torch (dependencies from .carry, see
# scripts/prepare-carry.sh), run the tests, then train the Llama-3-8B shape cut
# to 4 layers at 32K and 64K tokens under keep and recompute, and rerun the
# anchor probe's layer-stack rows in the same call. Results go to $OUT.
# Usage (device tool): carry [".carry"], command "bash scripts/gpu-check.sh".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memo-gpu}
mkdir -p "$OUT"
TORCH_PREFIX=$(python3 -W ignore -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee "$OUT/commit.txt"

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$PWD/.carry;$TORCH_PREFIX" > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build -j 16 > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
(cd build && OMP_NUM_THREADS=4 ctest -j 8 --output-on-failure > "$OUT/ctest.log" 2>&1); tail -3 "$OUT/ctest.log"

for seq in 32768 65536; do
  for policy in keep recompute; do
    build/memo train --model llama3-8b --layers 4 --seq-len $seq --batch 1 --steps 5 --warmup 1 \
      --policy $policy --log-every 1 --json "$OUT/train_${policy}_${seq}.json" 2>&1 | tail -4
  done
done

# Issue 3's targets: memo vs keep at 64K, memo vs recompute at 128K (keep OOMs there).
for seq in 65536 131072; do
  build/memo bench --model llama3-8b --layers 4 --seq-len $seq --batch 1 --steps 3 \
    --json "$OUT/bench_${seq}.json" --trace "$OUT/trace_${seq}" 2>&1 | tail -6
done

if [[ -f .carry/probes/gpu_anchor.py ]]; then
  BUDGET_S=${BUDGET_S:-240} OUT="$OUT" python3 .carry/probes/gpu_anchor.py > "$OUT/anchor.log" 2>&1
  tail -25 "$OUT/anchor.log"
fi
