#!/usr/bin/env bash
# Copies the header-only and static build dependencies (Debian packages) into
# .carry/, a git-ignored folder laid out like /usr, that travels to a GPU
# machine without apt. There, scripts/gpu-check.sh builds against .carry and
# the machine's CUDA torch.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
arch=lib/x86_64-linux-gnu
rm -rf .carry && mkdir -p .carry/include .carry/$arch/cmake .carry/share/cmake
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/toml++ /usr/include/gtest .carry/include/
cp /usr/$arch/libgtest.a /usr/$arch/libgtest_main.a .carry/$arch/
cp -r /usr/$arch/cmake/GTest .carry/$arch/cmake/
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 .carry/share/cmake/
# The anchor probe, to rerun beside our own numbers in the same device call.
mkdir -p .carry/probes && cp ../shared/probes/gpu_anchor.py .carry/probes/ 2>/dev/null || true
du -sh .carry
