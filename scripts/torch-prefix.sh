#!/usr/bin/env bash
# Prints the CMake prefix path of the libtorch memo builds against:
# the system Python's torch when it is a CUDA build (GPU machines), else the
# repo's .venv (CPU wheel). With --kind, prints "system" or "venv" instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${MEMO_TORCH:-auto}" != venv ]] && python3 -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' >/dev/null 2>&1; then
  kind=system; py=python3
else
  kind=venv; py=.venv/bin/python
fi
if [[ "${1:-}" == --kind ]]; then echo "$kind"; exit 0; fi
"$py" -W ignore -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null
