#!/usr/bin/env bash
# The daily job for schedulers that only know "now" (the systemd timer, cron, the Kubernetes
# CronJob): runs `marnflow run --date D --promote-if-better` for every day from the one after the
# last successful day up to yesterday (UTC), oldest first, and stops at the first failure (a day's
# features read the previous day's user_history and daily counts, so order matters).
#
#   marnflow-daily.sh --state-dir DIR [--bin PATH] [--lake URI] [--config FILE] [--env-file FILE]
#                     [--model NAME] [--until YYYY-MM-DD] [--from YYYY-MM-DD] [--max-days N]
#                     [--no-promote] [--dry-run] [-- more flags for `marnflow run`]
#
# State (plain files, safe to read and to edit by hand; see ops/RUNBOOK.md):
#   DIR/<model>/last-success        the last day that succeeded, YYYY-MM-DD
#   DIR/<model>/outcomes/<D>.json   what `marnflow run --date D --json` printed
#   DIR/<model>/lock                held while running (a second start exits 0 at once)
#
# Days run: from --from (a backfill or rerun; `marnflow run` is idempotent per day), else from the
# day after last-success, else (no state yet) only --until. --until defaults to yesterday, UTC.
# A catch-up of more than --max-days (default 31) days is refused: run it with --from instead.
# marnflow's own settings come from its environment (MARNFLOW_LAKE, MARNFLOW_CONFIG, AWS_*), which
# --env-file FILE (KEY=value lines, e.g. /etc/marnflow/marnflow.env) adds to when FILE exists;
# marnflow rejects MARNFLOW_* variables that are not its settings.
#
# Exit status: 0 when every day succeeded (or nothing was due), marnflow's status for the day
# that failed (1 runtime, 2 usage or configuration), 2 for a bad flag here.
set -euo pipefail

say() { echo "marnflow-daily: $*" >&2; }
usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
valid_day() { [[ $1 =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}$ ]] && [ "$(date -u -d "$1" +%F 2>/dev/null)" = "$1" ]; }
next_day() { date -u -d "$1 + 1 day" +%F; }

state_dir="" bin="marnflow" lake="" config="" env_file="" model="ctr" until="" from="" max_days=31 promote=1 dry_run=0
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --state-dir) state_dir="${2:?--state-dir needs a folder}"; shift 2 ;;
    --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
    --lake) lake="${2:?--lake needs a URI}"; shift 2 ;;
    --config) config="${2:?--config needs a file}"; shift 2 ;;
    --env-file) env_file="${2:?--env-file needs a file}"; shift 2 ;;
    --model) model="${2:?--model needs a name}"; shift 2 ;;
    --until) until="${2:?--until needs a day}"; shift 2 ;;
    --from) from="${2:?--from needs a day}"; shift 2 ;;
    --max-days) max_days="${2:?--max-days needs a number}"; shift 2 ;;
    --no-promote) promote=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) usage ;;
    *) say "unknown flag $1"; usage ;;
  esac
done
[ -n "$state_dir" ] || { say "--state-dir is required"; usage; }
[[ $max_days =~ ^[1-9][0-9]*$ ]] || { say "--max-days must be a positive integer, not '$max_days'"; exit 2; }
[[ $model =~ ^[A-Za-z0-9_.-]+$ ]] || { say "--model '$model' is not a valid model name"; exit 2; }
if [ -n "$env_file" ] && [ -e "$env_file" ]; then
  set -a
  # shellcheck disable=SC1090
  . "$env_file"
  set +a
fi
until="${until:-$(date -u -d yesterday +%F)}"
valid_day "$until" || { say "--until '$until' is not a day (YYYY-MM-DD)"; exit 2; }
[ -z "$from" ] || valid_day "$from" || { say "--from '$from' is not a day (YYYY-MM-DD)"; exit 2; }
command -v "$bin" >/dev/null 2>&1 || { say "marnflow binary '$bin' not found (give --bin PATH)"; exit 2; }

dir="$state_dir/$model"
mkdir -p "$dir/outcomes"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$dir/lock"
  if ! flock -n 9; then
    say "another run holds $dir/lock; nothing to do"
    exit 0
  fi
else
  say "flock not found (package util-linux): running without a lock"
fi

last=""
if [ -s "$dir/last-success" ]; then
  last="$(tr -d '[:space:]' <"$dir/last-success")"
  valid_day "$last" || { say "$dir/last-success holds '$last', not a day: fix or remove it"; exit 2; }
fi

if [ -n "$from" ]; then
  start="$from"
elif [ -n "$last" ]; then
  start="$(next_day "$last")"
else
  start="$until"
  say "no state in $dir yet: running $until only (use --from to backfill earlier days)"
fi

days=()
d="$start"
while [[ ! $d > $until ]]; do
  days+=("$d")
  d="$(next_day "$d")"
done
if [ ${#days[@]} -eq 0 ]; then
  say "up to date: last success $last, nothing due until $until"
  exit 0
fi
if [ -z "$from" ] && [ ${#days[@]} -gt "$max_days" ]; then
  say "${#days[@]} days due ($start .. $until), more than --max-days $max_days: refusing to catch up" \
    "automatically; run them on purpose with --from $start (see ops/RUNBOOK.md, backfill)"
  exit 1
fi

cmd=("$bin")
[ -z "$lake" ] || cmd+=(--lake "$lake")
[ -z "$config" ] || cmd+=(--config "$config")
say "${#days[@]} day(s) to run: ${days[0]} .. ${days[${#days[@]} - 1]} (model $model)"
for day in "${days[@]}"; do
  run=("${cmd[@]}" run --date "$day" --model "$model" --json)
  [ "$promote" = 0 ] || run+=(--promote-if-better)
  run+=("${extra[@]}")
  if [ "$dry_run" = 1 ]; then
    echo "${run[*]}"
    continue
  fi
  say "$day: ${run[*]}"
  started=$SECONDS
  status=0
  "${run[@]}" >"$dir/outcomes/.$day.json.tmp" || status=$?
  if [ "$status" -ne 0 ]; then
    rm -f "$dir/outcomes/.$day.json.tmp"
    say "$day: FAILED with exit status $status after $((SECONDS - started)) s; later days not run;" \
      "last success stays ${last:-none} (ops/RUNBOOK.md, a failed day)"
    exit "$status"
  fi
  mv "$dir/outcomes/.$day.json.tmp" "$dir/outcomes/$day.json"
  if [ -z "$last" ] || [[ $day > $last ]]; then
    echo "$day" >"$dir/.last-success.tmp"
    mv "$dir/.last-success.tmp" "$dir/last-success"
    last="$day"
  fi
  # A one-line digest of the outcome (the whole JSON is in the file).
  digest="$(grep -o -E '"train":\{"model":"[^"]*","version":[0-9]+|"candidate_score":[^,}]*|"promoted":(true|false)' \
    "$dir/outcomes/$day.json" | sed -E 's/"train":\{"model":"[^"]*",//; s/"//g' | tr '\n' ' ' || true)"
  say "$day: ok in $((SECONDS - started)) s: ${digest}(outcome in $dir/outcomes/$day.json)"
done
