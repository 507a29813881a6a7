#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian build dependencies and a
# repo-local virtual environment holding the CPU libtorch (torch==2.13.0).
# A machine whose system Python already has a CUDA torch uses that instead
# (see scripts/torch-prefix.sh); set MEMO_SKIP_APT=1 where apt is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

# libgloo-dev: only Gloo's headers, which c10d's ProcessGroupGloo.hpp includes
# (Gloo itself is inside libtorch); without them memo builds for one process.
APT_PACKAGES=(libgtest-dev nlohmann-json3-dev libtomlplusplus-dev libcli11-dev ccache libgloo-dev)
TORCH_VERSION=2.13.0

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ "${MEMO_SKIP_APT:-0}" == 1 ]]; then
    echo "setup: skipping apt (MEMO_SKIP_APT=1); missing: ${missing[*]}" >&2
  else
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [[ "$(scripts/torch-prefix.sh --kind)" == venv ]]; then
  stamp=.venv/.memo-torch-$TORCH_VERSION
  if [[ ! -f $stamp ]]; then
    echo "setup: creating .venv with torch==$TORCH_VERSION (CPU)"
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check "torch==$TORCH_VERSION"
    touch "$stamp"
  fi
fi

# Test-only Python packages for tests/python (transformers parity). Pinned to
# versions that pip resolves without pulling another torch.
PY_TEST_PACKAGES=(transformers==5.24.0 pytest==9.2.0 numpy==2.4.6)
if [[ -x .venv/bin/python ]]; then
  stamp=.venv/.memo-pytest-$(echo "${PY_TEST_PACKAGES[*]}" | tr ' =' '_-')
  if [[ ! -f $stamp ]]; then
    echo "setup: installing ${PY_TEST_PACKAGES[*]} into .venv"
    .venv/bin/pip install -q --disable-pip-version-check "${PY_TEST_PACKAGES[@]}"
    touch "$stamp"
  fi
fi
