#!/usr/bin/env bash
# marnflow against the peer a user would pick instead, on the same work and the same machine,
# run in turn (A B A B ...), with the ratio of the medians:
#   features  `marnflow features --from --to` against the same daily job written plainly in
#             DuckDB (ops/peers/features_duckdb.py, 2 threads), over one generated lake; after the
#             runs, their labels, histories, buckets, user state and dictionaries are checked
#             equal (ops/peers/check_features.py) and the table is printed only if they are.
#   train     MARN's training step (forward + backward + AdaGrad) in the model benchmark
#             (model/benches/train_throughput.rs, variant marn) against the same model written
#             plainly in PyTorch (ops/peers/train_torch.py, 2 threads, dense and sparse
#             embeddings), at the benchmark's widths, on batches drawn alike; the ratio is taken
#             against PyTorch's faster setting.
#
#   bash ops/bench-peers.sh features [--runs 3] [--scale 1] [--days 14] [--lake DIR] [--bin PATH]
#   bash ops/bench-peers.sh train [--runs 3] [--seconds 3] [--batches 32,1024] [--device cpu|tch:cpu]
#
# features: --scale N multiplies the lake's users, items and exposures per day (scale 1: 20k
# users, 20k items, 100k exposures a day, 32-d images; 14 days). The lake is generated once per
# shape under --lake (default ~/.cache/marnflow/bench-peers) and reused. Needs the release binary
# (--bin, else the one of .ci/run's target directory, built if missing) and the peers' venv (bash
# ops/setup-peers.sh). Wall time and peak resident memory come from /usr/bin/time.
# train: needs the torch of `bash ops/setup-tch.sh` (its venv, $TORCH_VENV or
# ~/.cache/marnflow/torch-2.9.0); --device tch:cpu builds the benchmark with LibTorch from it.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"
case "$what" in
  features | train) shift ;;
  *)
    echo "usage: bash ops/bench-peers.sh features [--runs N] [--scale N] [--days N] [--lake DIR] [--bin PATH]" >&2
    echo "       bash ops/bench-peers.sh train [--runs N] [--seconds S] [--batches 32,1024] [--device cpu|tch:cpu]" >&2
    exit 2
    ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marnflow/target}"
# Both sides run under the same C library allocator setting. marnflow restarts itself with glibc
# keeping freed memory (RETAINING_MALLOC in model/src/device.rs: no mmap for large blocks, no heap
# trimming, so the kernel does not zero the pages of every step's tensors again); the peers' timed
# commands get the same through `env`. MARNFLOW_MALLOC=system runs both sides with glibc's defaults instead.
# Only the timed commands get it: the check of the tables afterwards runs on the defaults.
if [ "${MARNFLOW_MALLOC:-}" = "system" ]; then
  peer_env=(env)
  allocator="glibc's defaults (MARNFLOW_MALLOC=system)"
else
  # The setting itself is read from where marnflow defines it, so the two cannot drift apart.
  tunables="$(sed -n 's/^pub const RETAINING_MALLOC: &str = "\(.*\)";$/\1/p' model/src/device.rs)"
  [ -n "$tunables" ] || { echo "bench-peers: RETAINING_MALLOC not found in model/src/device.rs" >&2; exit 2; }
  peer_env=(env "GLIBC_TUNABLES=$tunables")
  allocator="GLIBC_TUNABLES=$tunables"
fi
echo "bench-peers: allocator on both sides: $allocator" >&2
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [ "$what" = "train" ]; then
  runs=3 seconds=3 batches="32,1024" device="cpu"
  while [ $# -gt 0 ]; do
    case "$1" in
      --runs) runs="$2"; shift 2 ;;
      --seconds) seconds="$2"; shift 2 ;;
      --batches) batches="$2"; shift 2 ;;
      --device) device="$2"; shift 2 ;;
      *) echo "bench-peers: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  torch_venv="${TORCH_VENV:-$HOME/.cache/marnflow/torch-2.9.0}"
  torch_python="$torch_venv/bin/python"
  "$torch_python" -c 'import torch' 2>/dev/null ||
    { echo "bench-peers: no torch in $torch_venv; run bash ops/setup-tch.sh (or set TORCH_VENV)" >&2; exit 2; }
  features=()
  case "$device" in
    cpu) ;;
    tch:cpu)
      eval "$(TORCH_VENV="$torch_venv" bash ops/setup-tch.sh --env)"
      features=(--features marnflow-model/tch)
      ;;
    *) echo "bench-peers: --device is cpu or tch:cpu (a GPU is measured by ops/gpu-check.sh)" >&2; exit 2 ;;
  esac
  work="$HOME/.cache/marnflow/bench-peers/train-${device//:/-}"
  mkdir -p "$work"
  rm -f "$work"/*.json
  cargo bench --workspace "${features[@]}" --bench train_throughput --no-run >&2
  for run in $(seq 1 "$runs"); do
    BENCH_VARIANTS=marn BENCH_BATCHES="$batches" BENCH_SECONDS="$seconds" \
      cargo bench --workspace "${features[@]}" --bench train_throughput -- \
      --device "$device" --no-dedup --json "$work/marnflow.$run.json" >"$work/marnflow.log" 2>&1 ||
      { echo "bench-peers: the model benchmark failed; see $work/marnflow.log" >&2; exit 1; }
    "${peer_env[@]}" "$torch_python" ops/peers/train_torch.py --batch "$batches" --seconds "$seconds" --threads 2 \
      --embeddings both --json "$work/torch.$run.json" >"$work/torch.log" 2>&1 ||
      { echo "bench-peers: the PyTorch peer failed; see $work/torch.log" >&2; exit 1; }
    echo "bench-peers: run $run of $runs done" >&2
  done
  python3 - "$work" "$runs" "$device" "$allocator" <<'PY'
import json, statistics, sys

work, runs, device, allocator = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ours, peer = {}, {}
for run in range(1, runs + 1):
    for case in json.load(open(f"{work}/marnflow.{run}.json"))["cases"]:
        ours.setdefault(case["batch"], []).append(case)
    doc = json.load(open(f"{work}/torch.{run}.json"))
    for case in doc["cases"]:
        peer.setdefault((case["batch"], case["embeddings"]), []).append(case)
med = lambda cases: statistics.median(c["samples_per_s"] for c in cases)
first = ours[min(ours)][0]
print(f"MARN training step on {device}, samples/s, median of {runs} runs; parameters: marnflow "
      f"{first['params']:,}, PyTorch {peer[(min(ours), 'sparse')][0]['params']:,}; "
      f"PyTorch {doc['torch']} on {doc['threads']} threads; allocator on both sides: {allocator}\n")
print("| batch | distinct items (marnflow / PyTorch) | PyTorch dense | PyTorch sparse | marnflow | marnflow ÷ PyTorch's faster |")
print("|---:|---:|---:|---:|---:|---:|")
for batch in sorted(ours):
    dense, sparse = med(peer[(batch, "dense")]), med(peer[(batch, "sparse")])
    mine = med(ours[batch])
    distinct = f"{ours[batch][0]['distinct_items']:,} / {peer[(batch, 'sparse')][0]['distinct_items']:,}"
    print(f"| {batch} | {distinct} | {dense:,.0f} | {sparse:,.0f} | {mine:,.0f} | **{mine / max(dense, sparse):.2f}×** |")
PY
  exit 0
fi
runs=3 scale=1 days=14 root="$HOME/.cache/marnflow/bench-peers" bin=""
users=20000 items=20000 per_day=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --lake) root="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    # A smaller shape, for the test of this script.
    --users) users="$2"; shift 2 ;;
    --items) items="$2"; shift 2 ;;
    --exposures-per-day) per_day="$2"; shift 2 ;;
    *) echo "bench-peers: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -x /usr/bin/time ] || { echo "bench-peers: needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
python="$(bash ops/setup-peers.sh --python)"
bin="${bin:-$CARGO_TARGET_DIR/release/marnflow}"
[ -x "$bin" ] || cargo build --release --bin marnflow

users=$((users * scale)) items=$((items * scale)) per_day=$((per_day * scale))
shape="u${users}-i${items}-e${per_day}-d${days}"
pristine="$(bash ops/bench-lake.sh "$users" "$items" "$per_day" "$days" "$root" "$bin")"
first="2026-01-01"
last=$(date -d "$first + $((days - 1)) days" +%F)
events=$("$bin" --lake "$pristine" sql --format csv \
  "SELECT (SELECT count(*) FROM raw.exposures) + (SELECT count(*) FROM raw.clicks) + (SELECT count(*) FROM raw.behaviors)" |
  tail -n1)

work="$root/$shape/runs"
ours="$work/marnflow" peer="$work/duckdb"
mkdir -p "$work"
# A fresh lake of raw logs only for marnflow; an empty folder for the peer.
fresh_ours() { rm -rf "$ours" && mkdir -p "$ours" && cp -r "$pristine/raw" "$ours/raw"; }
fresh_peer() { rm -rf "$peer" && mkdir -p "$peer"; }
timed() { # label, command...: appends "wall_s peak_kib" to $work/<label>.times
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$work/$label.last" "$@" >"$work/$label.log" 2>&1 ||
    { echo "bench-peers: $label failed; see $work/$label.log" >&2; exit 1; }
  cat "$work/$label.last" >>"$work/$label.times"
}
rm -f "$work"/*.times
for run in $(seq 1 "$runs"); do
  fresh_ours
  timed marnflow "$bin" --lake "$ours" features --from "$first" --to "$last"
  fresh_peer
  timed duckdb "${peer_env[@]}" "$python" ops/peers/features_duckdb.py --lake "$pristine" --out "$peer" --from "$first" --to "$last" --threads 2
  echo "bench-peers: run $run of $runs: marnflow $(cut -d' ' -f1 "$work/marnflow.last") s, duckdb $(cut -d' ' -f1 "$work/duckdb.last") s" >&2
done
"$python" ops/peers/check_features.py --marnflow "$ours" --peer "$peer" >&2

ours_s=$(cut -d' ' -f1 "$work/marnflow.times" | median)
peer_s=$(cut -d' ' -f1 "$work/duckdb.times" | median)
ours_mib=$(cut -d' ' -f2 "$work/marnflow.times" | median | awk '{ printf "%.0f", $1 / 1024 }')
peer_mib=$(cut -d' ' -f2 "$work/duckdb.times" | median | awk '{ printf "%.0f", $1 / 1024 }')
echo "| feature job, $days days, $users users, $items items, $per_day exposures/day ($events raw events) | wall, median of $runs | raw events/s | peak RSS |"
echo "|---|---:|---:|---:|"
echo "| marnflow features | $ours_s s | $(awk -v e="$events" -v s="$ours_s" 'BEGIN { printf "%.0f", e / s }') | $ours_mib MiB |"
echo "| DuckDB (Python), 2 threads | $peer_s s | $(awk -v e="$events" -v s="$peer_s" 'BEGIN { printf "%.0f", e / s }') | $peer_mib MiB |"
echo "| **marnflow's speed ÷ DuckDB's** | **$(awk -v a="$peer_s" -v b="$ours_s" 'BEGIN { printf "%.2f", a / b }')×** | | |"
echo
echo "Allocator on both sides: $allocator."
