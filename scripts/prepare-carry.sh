#!/usr/bin/env bash
# Copies the header-only and static build dependencies (Debian packages) into
# .carry/, a git-ignored folder laid out like /usr, that travels to a GPU
# machine without apt. There, scripts/gpu-first.sh builds against .carry and
# the machine's CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
arch=lib/x86_64-linux-gnu
rm -rf .carry && mkdir -p .carry/include .carry/$arch/cmake .carry/share/cmake
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/toml++ /usr/include/gtest .carry/include/
# Gloo's headers for src/dist/ (ProcessGroupGloo.hpp includes them; the code is
# inside libtorch). NCCL's nccl.h is not carried: the GPU machine's torch
# depends on the nvidia-nccl Python package, and src/dist/CMakeLists.txt finds
# its header under site-packages/nvidia/nccl/include.
cp -r /usr/include/gloo .carry/include/
cp /usr/$arch/libgtest.a /usr/$arch/libgtest_main.a .carry/$arch/
cp -r /usr/$arch/cmake/GTest .carry/$arch/cmake/
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 .carry/share/cmake/
# The anchor probe, to rerun beside our own numbers in the same device call,
# and a copy whose attention and layer-stack sections run at 64K only (what
# scripts/gpu-first.sh has time for); the edit is checked, not assumed.
mkdir -p .carry/probes
if cp ../shared/probes/gpu_anchor.py .carry/probes/ 2>/dev/null; then
  sed -e 's/seqs = \[256\] if SMALL else \[8192, 32768, 65536, 131072\]/seqs = [256] if SMALL else [65536]/' \
      -e 's/L, seqs = 4096, 32, 8, 14336, 4, \[32768, 65536, 131072\]/L, seqs = 4096, 32, 8, 14336, 4, [65536]/' \
      .carry/probes/gpu_anchor.py > .carry/probes/gpu_anchor_64k.py
  if [[ $(grep -c 'else \[65536\]\|4, \[65536\]' .carry/probes/gpu_anchor_64k.py) != 2 ]]; then
    echo "prepare-carry: the probe's sequence lists changed; .carry/probes/gpu_anchor_64k.py not made" >&2
    rm -f .carry/probes/gpu_anchor_64k.py
  fi
fi
du -sh .carry
