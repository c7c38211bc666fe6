#!/usr/bin/env bash
# Training samples/s of `marnflow train` on 1 process and on N data-parallel replicas
# (`--workers N`, over MPI), run in turn (1, N, 1, N, ...) on one generated lake and this machine,
# with the medians and their ratio. Same model, global batch and data on both sides; the AUC of
# each run on the next day is printed beside its speed.
#
#   bash ops/train-scaling.sh [--runs 3] [--workers 2] [--variant marn] [--exposures 10000]
#                             [--days 2] [--batch 1024] [--lake DIR] [--bin PATH]
#
# Needs a build with data-parallel training (cargo build --release --features mpi; Open MPI first:
# bash ops/setup-mpi.sh). The model has configs/default.toml's widths. The lake (2000 users, 5000
# items, 32-d images; --days days of --exposures exposures, plus the evaluation day) is generated
# once per shape under --lake (default ~/.cache/marnflow/train-scaling) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3 workers=2 variant=marn exposures=10000 days=2 batch=1024
lake_root="$HOME/.cache/marnflow/train-scaling" bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --variant) variant="$2"; shift 2 ;;
    --exposures) exposures="$2"; shift 2 ;;
    --days) days="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --lake) lake_root="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    *) echo "train-scaling: unknown argument $1" >&2; exit 2 ;;
  esac
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marnflow/target}"
if [ -z "$bin" ]; then
  bin="$CARGO_TARGET_DIR/release/marnflow"
  cargo build --release --bin marnflow --features mpi
fi
command -v mpirun >/dev/null || { echo "train-scaling: mpirun is missing: bash ops/setup-mpi.sh" >&2; exit 1; }

lake="$lake_root/e${exposures}-d${days}"
first=2026-01-01
last="$(date -u -d "$first + $((days - 1)) days" +%F)"
eval_day="$(date -u -d "$first + $days days" +%F)"
if [ ! -f "$lake/.built" ]; then
  rm -rf "$lake"
  mkdir -p "$lake"
  "$bin" --lake "$lake" generate --users 2000 --items 5000 --days "$((days + 1))" \
    --exposures-per-day "$exposures" --image-dim 32 --seed 5 >/dev/null
  "$bin" --lake "$lake" features --from "$first" --to "$eval_day" >/dev/null
  touch "$lake/.built"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

one() {
  local n="$1" r="$2" out
  # A fresh model name per run: a run with a registered run key would be reused, not trained.
  out="$("$bin" --lake "$lake" train --model "scale-w$n-r$r-$$" --from "$first" --to "$last" --variant "$variant" \
    --epochs 1 --batch-size "$batch" --workers "$n" --json 2>"$work/train.log")" \
    || { echo "train-scaling: --workers $n failed:" >&2; tail -20 "$work/train.log" >&2; exit 1; }
  local sps version auc
  sps="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["samples_per_second"])' "$out")"
  version="$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["model"] + "@v" + str(d["version"]))' "$out")"
  auc="$("$bin" --lake "$lake" evaluate --model "$version" --date "$eval_day" --json 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["auc"])')"
  echo "$sps $auc" >>"$work/w$n"
  echo "run $r, $n worker(s): $sps samples/s, AUC $auc" >&2
}

for r in $(seq "$runs"); do
  one 1 "$r"
  one "$workers" "$r"
done

python3 - "$work" "$workers" "$runs" "$variant" "$batch" "$exposures" "$days" <<'EOF'
import statistics, sys
work, n, runs, variant, batch, exposures, days = sys.argv[1:]
rows = {}
for w in ("1", n):
    vals = [list(map(float, line.split())) for line in open(f"{work}/w{w}")]
    rows[w] = (statistics.median(v[0] for v in vals), [v[1] for v in vals])
print(f"{variant}, default widths, global batch {batch}, {days} day(s) of {exposures} exposures, 1 epoch; "
      f"{runs} runs each, in turn")
print("| replicas | median samples/s | vs 1 | AUC of each run |")
print("|---|---|---|---|")
for w, (sps, aucs) in rows.items():
    print(f"| {w} | {sps:,.0f} | {sps / rows['1'][0]:.2f}x | {', '.join(f'{a:.4f}' for a in aucs)} |")
EOF
