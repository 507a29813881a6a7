#!/usr/bin/env bash
# Builds the libFuzzer targets (outside the main CMake build, so CI needs no
# clang): fuzz/bin/fuzz_safetensors and fuzz/bin/fuzz_hf_config, with
# AddressSanitizer and UndefinedBehaviorSanitizer. Needs clang and libFuzzer
# (Debian: apt-get install clang-14 libclang-rt-14-dev).
# Run one:  fuzz/bin/fuzz_safetensors -max_total_time=600 fuzz/work/safetensors fuzz/corpus/safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
CXX=${CXX:-$(command -v clang++ || command -v clang++-14)}
FLAGS=(-std=c++20 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Isrc)
mkdir -p fuzz/bin
"$CXX" "${FLAGS[@]}" fuzz/fuzz_safetensors.cpp src/model/safetensors.cpp src/core/files.cpp src/core/mapped_file.cpp -o fuzz/bin/fuzz_safetensors
"$CXX" "${FLAGS[@]}" fuzz/fuzz_hf_config.cpp src/model/config.cpp src/core/files.cpp -o fuzz/bin/fuzz_hf_config
echo "built fuzz/bin/fuzz_safetensors fuzz/bin/fuzz_hf_config"
