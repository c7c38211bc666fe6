#!/usr/bin/env bash
# What data-parallel training (`cargo build --release --features mpi`, `marnflow train --workers N`)
# needs on Debian/Ubuntu: Open MPI (its launcher mpirun and its headers; Debian bookworm ships
# 4.1.4) and libclang (the mpi crate generates its bindings with bindgen at build time).
# Idempotent.
#
#   bash ops/setup-mpi.sh           # install what is missing (apt-get; sudo when not root)
#   bash ops/setup-mpi.sh --check   # only report; exit 1 if something is missing
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1
missing=()
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v mpicc >/dev/null 2>&1 || missing+=(libopenmpi-dev)
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-mpi: present: $(mpirun --version 2>/dev/null | head -n1), libclang"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  echo "setup-mpi: missing Debian packages: ${missing[*]} (run: bash ops/setup-mpi.sh)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq || true
$sudo apt-get install -y --no-install-recommends "${missing[@]}"
echo "setup-mpi: installed ${missing[*]}; build with: cargo build --release --features mpi"
