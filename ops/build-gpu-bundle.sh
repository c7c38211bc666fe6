#!/usr/bin/env bash
# Builds everything ops/gpu-check.sh needs on a GPU machine that has no network and packs it into
# one file: the `tch` builds of `marnflow` and of the model benchmark (train_throughput), linked
# against PyPI's torch (2.11.0 by default, the GPU machine's; its lib/ is found there at run
# time), stripped, plus a small generated lake with its features (the demo world).
#
#   bash ops/build-gpu-bundle.sh [OUT_DIR]      # default OUT_DIR: gpu-bundle/ (git-ignored)
#   -> OUT_DIR/marnflow-gpu.tar.xz; then, beside the checkout on the GPU machine:
#      bash ops/gpu-check.sh RESULTS_DIR [--bundle OUT_DIR/marnflow-gpu.tar.xz]
#
# Environment: TORCH_VERSION (default 2.11.0), TORCH_VENV (default
# $HOME/.cache/marnflow/torch-<version>), CARGO_TARGET_DIR (default $HOME/.cache/marnflow/target).
# The build adds `--features marnflow/tch` to the workspace: the first one recompiles most of the
# tree (about 25 minutes on 2 cores); later ones only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-bundle}"
export TORCH_VERSION="${TORCH_VERSION:-2.11.0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marnflow/target}"
eval "$(bash ops/setup-tch.sh)"
export LIBTORCH_USE_PYTORCH=1 LIBTORCH_BYPASS_VERSION_CHECK=1

echo "build-gpu-bundle: cargo build (tch, torch $TORCH_VERSION)" >&2
messages=$(mktemp)
cargo build --release --workspace --features marnflow/tch --bin marnflow --bench train_throughput \
  --message-format=json-render-diagnostics >"$messages"
executables=$(python3 - "$messages" <<'PY'
import json, sys
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        found[m["target"]["name"]] = m["executable"]
print(found["marnflow"], found["train_throughput"])
PY
)
rm -f "$messages"
read -r marnflow bench <<<"$executables"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin"
cp "$marnflow" "$stage/bin/marnflow"
cp "$bench" "$stage/bin/train_throughput"
strip "$stage/bin/marnflow" "$stage/bin/train_throughput"

echo "build-gpu-bundle: the demo world's lake, with features" >&2
"$stage/bin/marnflow" --lake "$stage/lake" --config configs/demo.toml generate --seed 7 >&2
"$stage/bin/marnflow" --lake "$stage/lake" --config configs/demo.toml features --from 2026-01-01 --to 2026-01-07 >&2

cat >"$stage/MANIFEST" <<MAN
commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo "+changes")
built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)
torch $(python3 -c 'import torch; print(torch.__version__)')
lake demo world (configs/demo.toml, seed 7): features 2026-01-01..2026-01-07
MAN
mkdir -p "$out"
tar -C "$stage" -cf - . | xz -T0 -6 >"$out/marnflow-gpu.tar.xz"
ls -l "$out/marnflow-gpu.tar.xz" >&2
echo "$out/marnflow-gpu.tar.xz"
