#!/usr/bin/env bash
# Installs what building marnflow needs on a fresh Debian/Ubuntu machine: a C compiler (zstd and
# ring build C code) and the Rust toolchain (via rustup, if cargo is missing). Idempotent.
#
#   bash ops/setup.sh           # install what is missing
#   bash ops/setup.sh --check   # only report; exit 1 if something is missing
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1
missing=()

command -v cc >/dev/null 2>&1 || missing+=("cc (a C compiler)")
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || missing+=("cargo (the Rust toolchain)")

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all prerequisites present: $(cargo --version 2>/dev/null || "$HOME/.cargo/bin/cargo" --version), $(cc --version | head -n1)"
  exit 0
fi
if [ "$check_only" = 1 ]; then
  printf 'setup: missing: %s\n' "${missing[@]}" >&2
  echo "setup: run 'bash ops/setup.sh' to install them" >&2
  exit 1
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! command -v cc >/dev/null 2>&1; then
  $sudo apt-get update
  $sudo apt-get install -y --no-install-recommends build-essential pkg-config
fi
if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  $sudo apt-get install -y --no-install-recommends curl ca-certificates
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  echo "setup: Rust installed; run: source \"$HOME/.cargo/env\""
fi
echo "setup: done"
