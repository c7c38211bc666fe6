#!/usr/bin/env bash
# Prepares a LibTorch for the `tch` feature: a Python virtualenv with PyPI's torch (2.9.0 by
# default, the LibTorch burn-tch 0.22.1 was written for; about 7 GB with its CUDA wheels), numpy
# and pyarrow, then prints the environment to build and run with. Idempotent: an existing venv
# with the right torch is reused.
#
#   bash ops/setup-tch.sh [VENV_DIR]        # default: $HOME/.cache/marnflow/torch-<version>
#   eval "$(bash ops/setup-tch.sh --env)"   # only print the exports (after a setup)
#   TORCH_VERSION=2.11.0 bash ops/setup-tch.sh   # the GPU machine's torch (see
#                                           # ops/build-gpu-bundle.sh); 2.11 needs
#                                           # LIBTORCH_BYPASS_VERSION_CHECK=1, which is printed
set -euo pipefail

version="${TORCH_VERSION:-2.9.0}"
venv="${TORCH_VENV:-$HOME/.cache/marnflow/torch-$version}"
if [ "${1:-}" != "--env" ] && [ -n "${1:-}" ]; then venv="$1"; fi

if [ "${1:-}" != "--env" ]; then
  command -v python3 >/dev/null || { echo "setup-tch: python3 is needed" >&2; exit 1; }
  have=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
  if [ "$have" != "$version" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip >&2
    "$venv/bin/python" -m pip install "torch==$version" numpy >&2
  fi
  "$venv/bin/python" -c 'import pyarrow' 2>/dev/null || "$venv/bin/python" -m pip install pyarrow >&2
fi
[ -x "$venv/bin/python" ] || { echo "setup-tch: no virtualenv at $venv; run bash ops/setup-tch.sh first" >&2; exit 1; }
lib=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
cat <<ENV
export PATH="$venv/bin:\$PATH"
export LIBTORCH_USE_PYTORCH=1
export LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
ENV
if [ "$version" != "2.9.0" ]; then
  # tch 0.22 checks for LibTorch 2.9 when it builds and when it loads.
  echo "export LIBTORCH_BYPASS_VERSION_CHECK=1"
fi
echo "# then: cargo build --release --workspace --features marnflow/tch   (--device tch:cpu or tch:cuda:0 at run time)"
