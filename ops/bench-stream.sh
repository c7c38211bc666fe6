#!/usr/bin/env bash
# `marnflow stream` within the day: a generated day's raw logs replayed into a lake
# (`marnflow replay`) at N times their real rate, and as fast as they can be written, while the
# stream follows them with a label window and emits each exposure's sample row once its window
# has closed, and trains a model online from those rows (`--train`, warm-started from a version
# trained on day 7 and promoted). Prints, for both: raw events/s the stream took in, sample rows
# emitted, the delay from the moment a row could be computed (the newest raw file of the pass that
# emitted it landed) to its row landing, p50 and p99 over every row, and samples/s trained with
# the online AUC.
#
#   bash ops/bench-stream.sh [--scale 1] [--speed 10] [--hours 1] [--window 60] [--slice 60]
#                            [--lake DIR] [--bin PATH]
#
# The lake is the feature benchmark's (ops/bench-peers.sh features: 20k users, 20k items, 100k
# exposures a day at scale 1; generated once under --lake, default ~/.cache/marnflow/bench-peers).
# Days 1-7 are built first with the daily job; day 8 is replayed: --hours of it (from midnight) at
# --speed (10: an hour in six minutes) in slices of --slice event-time seconds, then the whole day
# as fast as it goes. --window is features.label_window_seconds. Needs the release binary (--bin,
# else the one of .ci/run's target directory, built if missing) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marnflow/target}"
root="$HOME/.cache/marnflow/bench-peers"
scale=1 speed=10 hours=1 window=60 slice=60 bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --speed) speed="$2"; shift 2 ;;
    --hours) hours="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --slice) slice="$2"; shift 2 ;;
    --lake) root="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "bench-stream: unknown argument $1" >&2; exit 2 ;;
  esac
done
bin="${bin:-$CARGO_TARGET_DIR/release/marnflow}"
[ -x "$bin" ] || cargo build --release --bin marnflow
days=14 users=$((20000 * scale)) items=$((20000 * scale)) per_day=$((100000 * scale))
shape="u${users}-i${items}-e${per_day}-d${days}"
pristine="$(bash ops/bench-lake.sh "$users" "$items" "$per_day" "$days" "$root" "$bin")"
export MARNFLOW_FEATURES_LABEL_WINDOW_SECONDS="$window"
work="$root/$shape/stream"
base="$work/base"
rm -rf "$work" && mkdir -p "$base/raw"
cp -r "$pristine/raw/items" "$base/raw/items"
for log in exposures clicks behaviors; do
  mkdir -p "$base/raw/$log"
  for d in 01 02 03 04 05 06 07; do cp -r "$pristine/raw/$log/dt=2026-01-$d" "$base/raw/$log/"; done
done
echo "bench-stream: building days 1-7 of $shape with the daily job, training on day 7" >&2
"$bin" --lake "$base" features --from 2026-01-01 --to 2026-01-07 > /dev/null 2> "$work/base.log"
"$bin" --lake "$base" train --model ctr --from 2026-01-07 --to 2026-01-07 > /dev/null 2>> "$work/base.log"
"$bin" --lake "$base" models promote ctr@v1 --to production --reason "bench-stream" > /dev/null 2>> "$work/base.log"

summarise() { # $1: the stream's JSON lines, $2: wall seconds of the replay, $3: what
  python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
parts = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
parts = [p for p in parts if p.get("event") == "part" and p["date"] == "2026-01-08"]
if not parts:
    sys.exit("bench-stream: the stream emitted nothing")
raw = sum(p["raw_events"] for p in parts)
rows = sum(p["rows"] for p in parts)
busy = sum(p["seconds"] for p in parts)
last = parts[-1]
trained = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
trained = [t for t in trained if t.get("event") == "trained"]
if trained:
    n = sum(t["rows"] for t in trained)
    s = sum(t["seconds"] for t in trained)
    auc = [t["online_auc"] for t in trained if t["online_auc"] is not None]
    versions = [t["registered"] for t in trained if t["registered"] is not None]
    print(f"{sys.argv[3]}, online training: {len(trained)} parts, {n} rows trained in {s:.1f} s: {n / s:,.0f} samples/s; "
          f"online AUC of the last rows {auc[-1] if auc else float('nan'):.4f}; versions registered {versions}")
print(f"{sys.argv[3]}: {len(parts)} parts, {raw} raw events, {rows} sample rows through {last['emitted_through']}; "
      f"replay {float(sys.argv[2]):.1f} s, stream busy {busy:.1f} s: {raw / busy:,.0f} raw events/s and "
      f"{rows / busy:,.0f} rows/s while busy; delay p50 {last['day_delay_p50_seconds']:.2f} s, "
      f"p99 {last['day_delay_p99_seconds']:.2f} s")
EOF
}

# As fast as it goes: the whole day written at once, then one pass of the stream.
cp -r "$base" "$work/fast"
"$bin" --lake "$work/fast" replay --source "$pristine" --from 2026-01-08 --speed 0 --slice-seconds "$slice" 2> "$work/fast-replay.log"
start=$(date +%s.%N)
"$bin" --lake "$work/fast" stream --from 2026-01-08 --once --lateness-seconds 0 --out-of-order-seconds 0 --json --train ctr \
  > "$work/fast.jsonl" 2> "$work/fast.log"
end=$(date +%s.%N)
summarise "$work/fast.jsonl" "$(echo "$end - $start" | bc)" "the whole day 8 at once"

# At --speed: the stream follows the replay, polling every second.
cp -r "$base" "$work/live"
"$bin" --lake "$work/live" stream --from 2026-01-08 --lateness-seconds 0 --out-of-order-seconds 0 --poll-seconds 1 --json \
  --train ctr --register-every-minutes 2 \
  > "$work/live.jsonl" 2> "$work/live.log" &
stream=$!
trap 'kill $stream 2>/dev/null || true' EXIT
start=$(date +%s.%N)
"$bin" --lake "$work/live" replay --source "$pristine" --from 2026-01-08 --speed "$speed" --slice-seconds "$slice" \
  --hours "$hours" 2> "$work/live-replay.log"
end=$(date +%s.%N)
sleep 10
kill "$stream" 2>/dev/null || true
wait "$stream" 2>/dev/null || true
summarise "$work/live.jsonl" "$(echo "$end - $start" | bc)" "$hours h of day 8 at ${speed}x"
