#!/usr/bin/env bash
# The feature job of one day on a Ballista cluster of 1 and of 2 executors, against the same day
# run embedded, on one generated lake and this machine. Each setting starts its own scheduler and
# executors on loopback (`marnflow cluster scheduler|executor`); the settings run in turn
# (embedded, 1 executor, 2 executors, embedded, ...), and the medians and ratios are printed.
#
#   bash ops/cluster-scaling.sh [--runs 3] [--users 20000] [--items 20000] [--exposures 100000]
#                               [--tasks 2] [--partitions 1] [--lake DIR] [--bin PATH]
#
# --tasks is each executor's concurrent tasks. --partitions is features.partitions for every
# setting (the user-keyed tables as that many files a day; on the cluster the executors write
# them, embedded this process does). The lake (3 days; days 1-2 built embedded first, so
# the timed day has a previous day's state and windows) is generated once per shape under --lake
# (default ~/.cache/marnflow/cluster-scaling) and reused; the timed day is day 3, rebuilt each run
# (a rerun of a day replaces it). After the runs the day's feature files of the last embedded run
# and of the last cluster runs are compared byte for byte, and the table is printed only if they
# are equal. Wall time; CPU seconds (user + system) of the client from /usr/bin/time and of the
# executors from /proc/PID/stat; peak resident memory of the features client from /usr/bin/time, and
# of the largest executor from its /proc/PID/status (VmHWM).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 users=20000 items=20000 exposures=100000 tasks=2 partitions=1
lake_root="$HOME/.cache/marnflow/cluster-scaling" bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --users) users="$2"; shift 2 ;;
    --items) items="$2"; shift 2 ;;
    --exposures) exposures="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --partitions) partitions="$2"; shift 2 ;;
    --lake) lake_root="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "cluster-scaling: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marnflow/target}"
if [ -z "$bin" ]; then
  bin="$CARGO_TARGET_DIR/release/marnflow"
  [ -x "$bin" ] || cargo build --release --bin marnflow
fi
[ -x /usr/bin/time ] || { echo "cluster-scaling: needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 1; }

lake="$lake_root/u${users}-i${items}-e${exposures}"
if [ ! -f "$lake/.built" ]; then
  rm -rf "$lake"
  mkdir -p "$lake"
  "$bin" --lake "$lake" generate --users "$users" --items "$items" --days 3 \
    --exposures-per-day "$exposures" --image-dim 32 --seed 7 >/dev/null
  "$bin" --lake "$lake" features --from 2026-01-01 --to 2026-01-02 >/dev/null
  touch "$lake/.built"
fi
day=2026-01-03
work="$(mktemp -d)"
pids=() executors=()
stop_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=() executors=()
}
trap 'stop_cluster; [ -n "${KEEP_WORK:-}" ] && echo "work: $work" >&2 || rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "cluster-scaling: nothing listens on $1 after 60 s; logs in $work" >&2
  exit 1
}

# start_cluster N: a scheduler and N executors; sets addr to the scheduler's address.
start_cluster() {
  local n="$1" sched port
  sched="$(free_port)"
  "$bin" cluster scheduler --bind "127.0.0.1:$sched" >/dev/null 2>"$work/sched.log" &
  pids+=($!)
  wait_port "$sched"
  for i in $(seq "$n"); do
    while :; do
      port="$(free_port)"
      python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$port+1))" 2>/dev/null && break
    done
    "$bin" cluster executor --scheduler "127.0.0.1:$sched" \
      --bind "127.0.0.1:$port" --concurrent-tasks "$tasks" --work-dir "$work/exec-$i" >/dev/null 2>"$work/exec-$i.log" &
    pids+=($!)
    executors+=($!)
    wait_port "$((port + 1))"
  done
  addr="127.0.0.1:$sched"
}

# one SETTING RUN: times the day once; appends "seconds client_kib executors_kib" to $work/SETTING.
one() {
  local setting="$1" engine=() exec_kib=0
  addr=""
  case "$setting" in
    embedded) ;;
    exec1) start_cluster 1 ;;
    exec2) start_cluster 2 ;;
  esac
  [ -n "$addr" ] && engine=(--engine "ballista://$addr")
  local t0 t1
  t0="$(date +%s.%N)"
  /usr/bin/time -f '%M %U %S' -o "$work/client.rss" "$bin" --lake "$lake" features --date "$day" --partitions "$partitions" "${engine[@]}" \
    >/dev/null 2>"$work/client.log" || { echo "cluster-scaling: $setting failed:" >&2; tail -20 "$work/client.log" >&2; exit 1; }
  t1="$(date +%s.%N)"
  local exec_ticks=0 ticks
  for p in "${executors[@]}"; do
    kib="$(awk '/^VmHWM/ {print $2}' "/proc/$p/status")"
    exec_kib=$((exec_kib > kib ? exec_kib : kib))
    # utime + stime (fields 14 and 15 of /proc/PID/stat, after the command name in parentheses)
    ticks="$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')"
    exec_ticks=$((exec_ticks + ticks))
  done
  stop_cluster
  # seconds, client peak KiB, client user s, client system s, largest executor peak KiB, executors' CPU s
  read -r c_kib c_user c_sys < <(tail -1 "$work/client.rss")
  echo "$(python3 -c "print($t1-$t0)") $c_kib $c_user $c_sys $exec_kib $(python3 -c "print($exec_ticks/$(getconf CLK_TCK))")" >>"$work/$setting"
  mkdir -p "$work/out-$setting"
  rm -rf "$work/out-$setting"/*
  (cd "$lake" && find features -path "*dt=$day*" -name '*.parquet' | sort | while read -r f; do
    mkdir -p "$work/out-$setting/$(dirname "$f")"; cp "$f" "$work/out-$setting/$f"; done)
}

for r in $(seq "$runs"); do
  for s in embedded exec1 exec2; do
    one "$s"
    echo "run $r $s: $(tail -1 "$work/$s")" >&2
  done
done
for s in exec1 exec2; do
  diff -r "$work/out-embedded" "$work/out-$s" >/dev/null || {
    echo "cluster-scaling: the day's feature files on $s differ from the embedded run's" >&2; exit 1; }
done

python3 - "$work" "$users" "$items" "$exposures" "$tasks" "$runs" "$partitions" <<'EOF'
import statistics, sys
work, users, items, exposures, tasks, runs, partitions = sys.argv[1:]
rows = {}
for s in ("embedded", "exec1", "exec2"):
    vals = [list(map(float, line.split())) for line in open(f"{work}/{s}")]
    rows[s] = (statistics.median(v[0] for v in vals), max(v[1] for v in vals) / 1024, max(v[4] for v in vals) / 1024,
               statistics.median(v[2] + v[3] for v in vals), statistics.median(v[5] for v in vals))
base = rows["embedded"][0]
print(f"one day's features: {users} users, {items} items, {exposures} exposures/day; "
      f"{runs} runs each, in turn; executors run {tasks} tasks at once; {partitions} user partition(s); "
      "files byte-identical")
print("| setting | median s | vs embedded | client CPU s | executors' CPU s | client peak MiB | largest executor peak MiB |")
print("|---|---|---|---|---|---|---|")
names = {"embedded": "embedded (one process)", "exec1": "Ballista, 1 executor", "exec2": "Ballista, 2 executors"}
for s, (t, c, e, ccpu, ecpu) in rows.items():
    if s == "embedded":
        print(f"| {names[s]} | {t:.2f} | 1.00x | {ccpu:.2f} | - | {c:.0f} | - |")
    else:
        print(f"| {names[s]} | {t:.2f} | {base / t:.2f}x | {ccpu:.2f} | {ecpu:.2f} | {c:.0f} | {e:.0f} |")
print(f"2 executors vs 1: {rows['exec1'][0] / rows['exec2'][0]:.2f}x")
EOF
