#!/usr/bin/env bash
# The GPU check of the planned allocator (issue 5), as one script for a lent
# H100/H200 that fits one 10-minute device call: build memo against the
# machine's CUDA torch (dependencies from .carry, see scripts/prepare-carry.sh),
# then, on the 4-layer Llama-3-8B shape, run `memo bench` in two processes
# per length (one CUDA allocator per process): PyTorch's caching allocator,
# then --planned-memory; memo at 64K and 128K, then offload on a ladder. Compared: step time, fragmentation
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

bench() {  # bench NAME POLICY SEQ STEPS [extra flags]: one process, one JSON
  local name=$1 policy=$2 seq=$3 steps=$4; shift 4
  if (( SECONDS - start > BUDGET_S )); then echo "$name: skipped (budget)"; return; fi
  timeout 240 build/memo bench --model llama3-8b --layers 4 --seq-len "$seq" --batch 1 --steps "$steps" \
    --policies "$policy" --json "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name (rc $?, $((SECONDS - start)) s)"; tail -2 "$OUT/$name.log"
}

for seq in 65536 131072; do
  bench "memo_caching_$seq" memo "$seq" 3
  bench "memo_planned_$seq" memo "$seq" 3 --planned-memory
done
# The ladder, under offload (35% reserved-but-unallocated with the caching
# allocator in ANCHORS.md), one timed step each: the first length where the
# caching allocator fails while the planned one runs is the result.
for seq in 196608 262144 327680; do
  bench "offload_caching_$seq" offload "$seq" 1
  bench "offload_planned_$seq" offload "$seq" 1 --planned-memory
done
