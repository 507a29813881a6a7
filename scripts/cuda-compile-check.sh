#!/usr/bin/env bash
# Compiles the CUDA-only sources (src/cuda/, and the MEMO_WITH_CUDA branches
# of the files that dispatch to them) against a CUDA libtorch's headers, so a
# CPU-only CI still catches a CUDA build break, and checks that every
# c10::cuda / torch::cuda / c10d::ProcessGroupNCCL symbol they call is exported by that libtorch's
# libc10_cuda.so / libtorch_cuda.so (what the link would need). Nothing is
# linked or run: that needs a GPU machine (scripts/gpu-first.sh).
#
# Headers come from, in order: the system Python's torch when it is a CUDA
# build (GPU machines), else the CUDA torch wheel and the NVIDIA header wheels
# that pip can fetch from its configured index (on these machines a local
# mirror), unpacked under DIR (headers only, kept between runs).
#
# usage: scripts/cuda-compile-check.sh DIR
# exit: 0 compiled, 1 a compile error, 77 no CUDA libtorch headers to be had.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mkdir -p "${1:?usage: $0 DIR}" && cd "$1" && pwd)
spec=${MEMO_CUDA_TORCH_SPEC:-torch==2.14.1}
cxx=${CXX:-c++}

if python3 -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; then
  torch_inc=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
  exports="$dir/cuda-exports.txt"
  for lib in "$torch_inc"/../lib/libtorch_cuda.so "$torch_inc"/../lib/libc10_cuda.so; do
    nm -D --defined-only --format=just-symbols "$lib"
  done > "$exports"
  cuda_inc=$(python3 - <<'PY'
import glob, os, site
for d in ["/usr/local/cuda/include"] + [p for s in site.getsitepackages() for p in glob.glob(s + "/nvidia/*/include")]:
    if os.path.exists(os.path.join(d, "cuda_runtime_api.h")):
        print(d); break
PY
)
else
  # The stamp names what was fetched and how it was laid out: a change refetches.
  stamp="$spec, headers + exports v2"
  if [[ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]]; then
    echo "cuda-compile-check: fetching the headers of $spec and the CUDA runtime into $dir"
    rm -rf "$dir/wheels" "$dir/root" && mkdir -p "$dir/wheels" "$dir/root"
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/wheels" \
         "$spec" nvidia-cuda-runtime nvidia-cuda-crt nvidia-cuda-cccl >"$dir/pip.log" 2>&1; then
      echo "cuda-compile-check: SKIPPED, pip cannot fetch $spec here (see $dir/pip.log)"
      exit 77
    fi
    for w in "$dir"/wheels/*.whl; do
      case "$(basename "$w")" in
        torch-*) python3 - "$w" "$dir/root" <<'PY'
import sys, zipfile
# The headers, the version file and the two CUDA libraries whose exports the
# symbol check reads.
keep = {"torch/version.py", "torch/lib/libtorch_cuda.so", "torch/lib/libc10_cuda.so"}
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("torch/include/") or n in keep])
PY
                 mv "$dir/root/torch/include" "$dir/root/torch-include"
                 mv "$dir/root/torch/version.py" "$dir/root/torch-version.py"
                 for lib in "$dir"/root/torch/lib/*.so; do
                   nm -D --defined-only --format=just-symbols "$lib" >> "$dir/root/cuda-exports.txt"
                 done
                 rm -rf "$dir/root/torch" ;;
        *) python3 -m zipfile -e "$w" "$dir/root" ;;
      esac
    done
    rm -rf "$dir/wheels"
    echo "$stamp" > "$dir/.stamp"
  fi
  torch_inc="$dir/root/torch-include"
  exports="$dir/root/cuda-exports.txt"
  cuda_inc=$(dirname "$(find "$dir/root/nvidia" -name cuda_runtime_api.h | head -1)")
  if ! grep -q "^cuda: Optional\[str\] = '" "$dir/root/torch-version.py"; then
    echo "cuda-compile-check: SKIPPED, $spec is not a CUDA build"
    exit 77
  fi
fi
[[ -n "$cuda_inc" && -f "$cuda_inc/cuda_runtime_api.h" ]] || { echo "cuda-compile-check: SKIPPED, no CUDA runtime headers"; exit 77; }

# src/cuda/process_group_nccl.cpp also needs nccl.h and the headers of the CUDA
# libraries ATen/cuda/CUDAContext.h names (cuBLAS, cuSPARSE, cuSOLVER). A GPU
# machine has them in the nvidia-* packages the CUDA torch depends on
# (src/dist/CMakeLists.txt finds nccl.h there the same way); here they come
# from those wheels, headers only, under DIR/nccl with a stamp of their own.
find_include() {  # find_include HEADER ROOT...: the folder holding HEADER, first found
  python3 - "$@" <<'PY'
import glob, site, sys
header, roots = sys.argv[1], sys.argv[2:] or site.getsitepackages()
for p in sorted(p for r in roots for p in glob.glob(r + "/nvidia/**/include/" + header, recursive=True)):
    print(p[: -len("/" + header)]); break
PY
}
nccl_inc=$(find_include nccl.h)
blas_inc=$(find_include cusparse.h)
if [[ -z "$nccl_inc" || -z "$blas_inc" ]]; then
  nccl_specs=${MEMO_NCCL_SPECS:-nvidia-nccl-cu13 nvidia-cublas nvidia-cusparse nvidia-cusolver}
  if [[ "$(cat "$dir/nccl/.stamp" 2>/dev/null)" != "$nccl_specs, headers" ]]; then
    echo "cuda-compile-check: fetching the headers of $nccl_specs into $dir/nccl"
    rm -rf "$dir/nccl" && mkdir -p "$dir/nccl/wheels" "$dir/nccl/root"
    # shellcheck disable=SC2086
    if python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir/nccl/wheels" $nccl_specs \
         >"$dir/nccl/pip.log" 2>&1; then
      python3 - "$dir/nccl/root" "$dir"/nccl/wheels/*.whl <<'PY'
import sys, zipfile
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(sys.argv[1], [n for n in z.namelist() if "/include/" in n])
PY
      echo "$nccl_specs, headers" > "$dir/nccl/.stamp"
    fi
    rm -rf "$dir/nccl/wheels"
  fi
  nccl_inc=$(find_include nccl.h "$dir/nccl/root")
  blas_inc=$(find_include cusparse.h "$dir/nccl/root")
fi

flags=(-std=c++20 -Wall -Wextra -Wno-unused-parameter -DMEMO_WITH_CUDA=1
       -Isrc -I"$torch_inc" -I"$torch_inc/torch/csrc/api/include" -I"$cuda_inc")
status=0
mkdir -p "$dir/obj"
for f in src/cuda/*.cpp src/memory/planned_allocator.cpp src/memory/pointer_planned_allocator.cpp src/memory/host_pool.cpp; do
  obj="$dir/obj/$(basename "$f" .cpp).o"
  extra=()
  if [[ $f == src/cuda/process_group_nccl.cpp ]]; then
    # As src/dist/CMakeLists.txt builds it: c10d with NCCL (torch_cpu's USE_DISTRIBUTED).
    if [[ -z "$nccl_inc" || -z "$blas_inc" ]]; then
      echo "cuda-compile-check: $f SKIPPED, no nccl.h or cuBLAS/cuSPARSE headers (see $dir/nccl/pip.log)"
      continue
    fi
    extra=(-Wno-interference-size -DUSE_DISTRIBUTED -DUSE_C10D_NCCL -DMEMO_WITH_DIST=1 -DMEMO_WITH_NCCL=1 -I"$nccl_inc" -I"$blas_inc")
  fi
  if ! "$cxx" "${flags[@]}" "${extra[@]}" -c "$f" -o "$obj"; then status=1; continue; fi
  # The CUDA-side symbols this object needs from libtorch, each must be exported.
  missing=0
  while read -r sym; do
    if ! grep -qxF "$sym" "$exports"; then
      echo "cuda-compile-check: $f needs $(echo "$sym" | c++filt), which libtorch does not export"
      missing=1
    fi
  done < <(nm -u --format=just-symbols "$obj" | while read -r m; do
             case "$(echo "$m" | c++filt)" in c10::cuda::*|torch::cuda::*|c10d::ProcessGroupNCCL*) echo "$m" ;; esac
           done)
  if (( missing )); then status=1; else echo "cuda-compile-check: $f compiles, its CUDA symbols are exported"; fi
done
exit $status
