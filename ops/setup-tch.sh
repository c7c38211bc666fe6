#!/usr/bin/env bash
# Prepares a LibTorch for the `tch` feature (burn-tch 0.22.1 expects LibTorch 2.9): a Python
# virtualenv with torch==2.9.0 from PyPI (about 7 GB with its CUDA wheels), then prints the
# environment to build and run with.
#
#   bash ops/setup-tch.sh [VENV_DIR]        # default: $HOME/.cache/marnflow/torch-venv
#   eval "$(bash ops/setup-tch.sh --env)"   # only print the exports (after a setup)
set -euo pipefail

venv="${MARNFLOW_TORCH_VENV:-$HOME/.cache/marnflow/torch-venv}"
if [ "${1:-}" != "--env" ] && [ -n "${1:-}" ]; then venv="$1"; fi

if [ "${1:-}" != "--env" ]; then
  command -v python3 >/dev/null || { echo "setup-tch: python3 is needed" >&2; exit 1; }
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --upgrade pip >&2
  "$venv/bin/python" -m pip install "torch==2.9.0" numpy >&2
fi
lib=$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
cat <<ENV
export PATH="$venv/bin:\$PATH"
export LIBTORCH_USE_PYTORCH=1
export LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
# then: cargo build --release --features tch   (and --device tch:cpu or tch:cuda:0 at run time)
ENV
