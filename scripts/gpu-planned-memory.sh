#!/usr/bin/env bash
# The GPU check of the planned allocator (issue 5), as one script for a lent
# H100/H200 that fits one 10-minute device call: build memo against the
# machine's CUDA torch (dependencies from .carry, see scripts/prepare-carry.sh),
# then, on the 4-layer Llama-3-8B shape under the memo policy, run `memo bench`
# in two processes per length (one CUDA allocator per process): PyTorch's
# caching allocator, then --planned-memory. Compared: step time, fragmentation
# (peak reserved - peak allocated, share of reserved), device mallocs per
# steady-state step, fallbacks. Then a ladder of longer sequences, caching
# allocator first, to find where it fails with memory reserved but
# unallocated, and whether the planned allocator runs there.
# Usage (device tool): carry [".carry"], command "bash scripts/gpu-planned-memory.sh".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/memo-gpu}
BUDGET_S=${BUDGET_S:-500}   # stop starting new runs after this many seconds
mkdir -p "$OUT"
start=$SECONDS
TORCH_PREFIX=$(python3 -W ignore -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
git rev-parse HEAD 2>/dev/null | tee "$OUT/commit.txt"

if [[ ! -x build/memo ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$PWD/.carry;$TORCH_PREFIX" > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
  cmake --build build -j 16 --target memo > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi
echo "built in $((SECONDS - start)) s"

bench() {  # bench NAME SEQ STEPS [extra flags]: one process, one JSON
  local name=$1 seq=$2 steps=$3; shift 3
  if (( SECONDS - start > BUDGET_S )); then echo "$name: skipped (budget)"; return; fi
  timeout 240 build/memo bench --model llama3-8b --layers 4 --seq-len "$seq" --batch 1 --steps "$steps" \
    --policies memo --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name (rc $?, $((SECONDS - start)) s)"; tail -2 "$OUT/$name.log"
}

for seq in 65536 131072; do
  bench "caching_$seq" "$seq" 3
  bench "planned_$seq" "$seq" 3 --planned-memory
done
# The ladder: one timed step each; attention time grows with the square.
for seq in 196608 262144 393216 524288; do
  bench "caching_$seq" "$seq" 1
  bench "planned_$seq" "$seq" 1 --planned-memory
done
