#!/usr/bin/env bash
# The generated lake the benchmarks share, made once per shape and reused: prints its path,
# ROOT/u<USERS>-i<ITEMS>-e<PER_DAY>-d<DAYS>/pristine (raw logs of DAYS days from 2026-01-01,
# 32-d images, 50 categories, 1000 shops, 2000 brands, seed 42).
#   pristine="$(bash ops/bench-lake.sh USERS ITEMS PER_DAY DAYS ROOT BIN)"
# Used by ops/bench-peers.sh (features) and ops/bench-stream.sh.
set -euo pipefail
[ $# -eq 6 ] || { echo "usage: bash ops/bench-lake.sh USERS ITEMS PER_DAY DAYS ROOT BIN" >&2; exit 2; }
users="$1" items="$2" per_day="$3" days="$4" root="$5" bin="$6"
pristine="$root/u${users}-i${items}-e${per_day}-d${days}/pristine"
if [ ! -d "$pristine/raw/exposures" ]; then
  rm -rf "$pristine"
  mkdir -p "$pristine"
  MARNFLOW_GENERATE_USERS=$users MARNFLOW_GENERATE_ITEMS=$items MARNFLOW_GENERATE_DAYS=$days \
    MARNFLOW_GENERATE_EXPOSURES_PER_DAY=$per_day MARNFLOW_GENERATE_IMAGE_DIM=32 \
    MARNFLOW_GENERATE_CATEGORIES=50 MARNFLOW_GENERATE_SHOPS=1000 MARNFLOW_GENERATE_BRANDS=2000 \
    MARNFLOW_GENERATE_START_DATE=2026-01-01 MARNFLOW_GENERATE_SEED=42 \
    "$bin" --lake "$pristine" generate >&2
fi
echo "$pristine"
