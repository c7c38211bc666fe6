#!/usr/bin/env bash
# Every GPU check in one command, for a GPU machine with no network (Python torch installed,
# the bundle of ops/build-gpu-bundle.sh brought along). Well inside 10 minutes on an H100.
#
#   bash ops/gpu-check.sh RESULTS_DIR [--device tch:cuda:0] [--bundle gpu-bundle/marnflow-gpu.tar.xz]
#                         [--seconds S] [--peak-gflops X] [--seeds N] [--epochs E] [--slow]
#                         [--only bench,train,precision,score]
#
# 1. unpacks the bundle; 2. points LD_LIBRARY_PATH at this machine's torch lib/; 3. saves
# nvidia-smi; 4. the model benchmark on DEVICE: marn and ids at batch 1024 and 4096 at the default
# widths, marn at the paper's widths (4096-d images, 300-d words) at batch 1024, each against
# the f32 matmul of the backend and a reference peak (default 790 TFLOP/s, the H100/H200 bf16
# dense peak measured here), then marn with the images resident on the device
# (train.images_on_device) in f32 and in bf16 (train.model.precision), with where each step's
# time goes; 5. trains MARN on the bundle's lake for one epoch on DEVICE and evaluates it, then
# again with the images on the device, and for each of N seeds (default 3) in f32 and in bf16,
# each trained for E epochs (default 1), plus a second f32 run of each seed: LibTorch's CUDA
# training is not bit-repeatable, so that rerun is the card's own noise floor (the AUC
# difference decides whether bf16 is kept); 6. scores the evaluation day with the same weights on DEVICE, on LibTorch's CPU
# and on burn-flex, and compares the predictions; 7. writes it all as JSON into RESULTS_DIR
# (summary.json gathers the numbers). A failing step is recorded and the others still run; the
# exit status is that of the first failure. --only runs some of the groups: bench (4), train (5's
# first two runs and their evaluation), precision (5's per-seed runs), score (6, which needs train).
#
# Each step has a time limit sized for a GPU; --slow multiplies them by 5 for a CPU run. On a
# device that is not CUDA the bf16 steps are skipped (and logged): LibTorch's CPU bf16 products
# ran MARN's step 8x slower than f32 on the development machine (13 against 111 samples/s), past
# any sensible limit; the bf16 AUC check on a CPU is the README's burn-flex one.
# Run it here end to end with `--device tch:cpu --slow` (after ops/build-gpu-bundle.sh; set
# TORCH_VENV's bin/ first on PATH so that python3 finds torch and pyarrow).
set -uo pipefail
usage() { sed -n '4,5p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
out="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
device="tch:cuda:0"
bundle="$root/gpu-bundle/marnflow-gpu.tar.xz"
seconds="${BENCH_SECONDS:-3}"
peak="790000"
scale=1
seeds=3
epochs=1
only="bench,train,precision,score"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --bundle) bundle="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --peak-gflops) peak="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --slow) scale=5; shift ;;
    *) usage ;;
  esac
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/gpu-check.log"
: >"$log"
status="$out/steps.tsv"
: >"$status"
first_failure=0

# step NAME SECONDS STDOUT COMMAND…: runs COMMAND under a time limit with its output to STDOUT
# (a file, or - for the log), logs it, and records its exit status and duration.
step() {
  local name="$1" limit="$2" stdout="$3"; shift 3
  local start rc
  limit=$((limit * scale))
  start=$(date +%s%N)
  echo "== $name: $*" | tee -a "$log" >&2
  if [ "$stdout" = "-" ]; then
    timeout "$limit" "$@" 2>&1 | tee -a "$log" >&2
  else
    timeout "$limit" "$@" 2> >(tee -a "$log" >&2) >"$stdout"
  fi
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( ($(date +%s%N) - start) / 1000000 ))" >>"$status"
  if [ "$rc" -ne 0 ]; then
    echo "== $name failed (exit $rc)" | tee -a "$log" >&2
    [ "$first_failure" -ne 0 ] || first_failure=$rc
  fi
  return 0
}

# 1. unpack
work="${TMPDIR:-/tmp}/marnflow-gpu-check"
rm -rf "$work"; mkdir -p "$work"
[ -f "$bundle" ] || { echo "gpu-check: no bundle at $bundle (run ops/build-gpu-bundle.sh)" >&2; exit 1; }
if command -v xz >/dev/null; then
  xz -dc "$bundle" | tar -C "$work" -xf -
else
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' "$bundle" "$work"
fi || { echo "gpu-check: cannot unpack $bundle" >&2; exit 1; }
cp "$work/MANIFEST" "$out/MANIFEST"

# 2. this machine's LibTorch
torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
  || { echo "gpu-check: python3 cannot import torch" >&2; exit 1; }
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LIBTORCH_BYPASS_VERSION_CHECK=1
python3 -c 'import json, torch; print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))' >"$out/torch.json"

# 3. the card
if command -v nvidia-smi >/dev/null; then
  nvidia-smi >"$out/nvidia-smi.txt" 2>&1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$out/nvidia-smi.txt" 2>&1
else
  echo "no nvidia-smi on this machine" >"$out/nvidia-smi.txt"
fi
cat "$out/nvidia-smi.txt" >&2

bin="$work/bin"
export BENCH_SECONDS="$seconds"
# wants GROUP: whether --only names GROUP.
wants() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
precisions="f32 bf16"
case "$device" in
  *cuda*) ;;
  *) precisions="f32"; echo "== bf16 steps skipped: $device is not a CUDA device" | tee -a "$log" >&2 ;;
esac
# 4. the model benchmark
if wants bench; then
  BENCH_VARIANTS=marn,ids BENCH_BATCHES=1024,4096 \
    step bench_default 150 "$out/bench-default.md" "$bin/train_throughput" --device "$device" --matmul-n 4096 \
    --peak-gflops "$peak" --phases --no-dedup --json "$out/bench-default.json"
  BENCH_VARIANTS=marn BENCH_BATCHES=1024 \
    step bench_paper 100 "$out/bench-paper.md" "$bin/train_throughput" --device "$device" --matmul-n 4096 \
    --peak-gflops "$peak" --image-dim 4096 --word-dim 300 --phases --no-dedup --json "$out/bench-paper.json"
  for precision in $precisions; do
    BENCH_VARIANTS=marn BENCH_BATCHES=1024,4096 \
      step "bench_resident_$precision" 150 "$out/bench-resident-$precision.md" "$bin/train_throughput" --device "$device" \
      --matmul-n 0 --peak-gflops "$peak" --resident-images --precision "$precision" --phases --no-dedup \
      --json "$out/bench-resident-$precision.json"
    BENCH_VARIANTS=marn BENCH_BATCHES=1024 \
      step "bench_paper_resident_$precision" 100 "$out/bench-paper-resident-$precision.md" "$bin/train_throughput" \
      --device "$device" --matmul-n 0 --peak-gflops "$peak" --image-dim 4096 --word-dim 300 --resident-images \
      --precision "$precision" --phases --no-dedup --json "$out/bench-paper-resident-$precision.json"
  done
fi

# 5. one epoch of MARN on the lake, then its evaluation
mf=("$bin/marnflow" --lake "$work/lake" --log-format json)
export MARNFLOW_TRAIN_RECALL_USERS="${MARNFLOW_TRAIN_RECALL_USERS:-50}"
# registered FILE: the version a train run registered (1 on the bundle's fresh lake).
registered() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$1" 2>/dev/null || echo 1; }
model="gpucheck@v1"
if wants train; then
  step train 200 "$out/train.json" "${mf[@]}" train --model gpucheck --from 2026-01-02 --to 2026-01-06 \
    --variant marn --epochs 1 --batch-size 1024 --device "$device" --json
  model="gpucheck@v$(registered "$out/train.json")"
  step evaluate 100 "$out/evaluate.json" "${mf[@]}" evaluate --model "$model" --date 2026-01-07 \
    --device "$device" --json
  # The same with the images on the device.
  step train_resident 200 "$out/train-resident.json" env MARNFLOW_TRAIN_IMAGES_ON_DEVICE=true "${mf[@]}" \
    train --model gpucheck-resident --from 2026-01-02 --to 2026-01-06 --variant marn --epochs 1 --batch-size 1024 \
    --device "$device" --json
fi
# Per seed, f32 against bf16 (images on the device), and f32 once more: the same seed's rerun.
if wants precision; then
  for seed in $(seq 1 "$seeds"); do
    for run in $precisions f32again; do
      precision="${run%again}"
      m="gpucheck-$run-s$seed"
      step "train_${run}_s$seed" $((200 * epochs)) "$out/train-$run-s$seed.json" env MARNFLOW_TRAIN_IMAGES_ON_DEVICE=true \
        MARNFLOW_TRAIN_MODEL_PRECISION="$precision" MARNFLOW_TRAIN_SEED="$seed" "${mf[@]}" train --model "$m" \
        --from 2026-01-02 --to 2026-01-06 --variant marn --epochs "$epochs" --batch-size 1024 --device "$device" --json
      step "evaluate_${run}_s$seed" 100 "$out/evaluate-$run-s$seed.json" "${mf[@]}" evaluate \
        --model "$m@v$(registered "$out/train-$run-s$seed.json")" --date 2026-01-07 --device "$device" --json
    done
  done
fi

# 6. the same weights scored on the device and on the CPU backends
if wants score; then
for d in $(printf '%s\n' "$device" tch:cpu cpu | awk '!seen[$0]++'); do
  name=$(echo "$d" | tr ':' '-')
  step "score_$name" 60 - env MARNFLOW_TRAIN_DEVICE="$d" "${mf[@]}" \
    score --model "$model" --date 2026-01-07 --out "$work/scores-$name.parquet"
done
step compare 30 - python3 - "$work" "$(echo "$device" | tr ':' '-')" "$out/predictions.json" <<'PY'
import json, sys
import pyarrow.parquet as pq
work, dev, path = sys.argv[1:4]
def load(name):
    t = pq.read_table(f"{work}/scores-{name}.parquet").to_pydict()
    return {(r, u, i): p for r, u, i, p in zip(t["request_id"], t["user_id"], t["item_id"], t["probability"])}
ref = load(dev)
report = {"device": dev, "rows": len(ref)}
for other in ("tch-cpu", "cpu"):
    if other == dev:
        continue
    o = load(other)
    if o.keys() != ref.keys():
        raise SystemExit(f"{other}: scored other rows than {dev}")
    diffs = [abs(ref[k] - o[k]) for k in ref]
    report[other] = {"max_abs_diff": max(diffs), "mean_abs_diff": sum(diffs) / len(diffs)}
json.dump(report, open(path, "w"), indent=2)
print(json.dumps(report))
PY
fi

# 7. one summary
python3 - "$out" <<'PY' >"$out/summary.json"
import json, os, sys
out = sys.argv[1]
def int_or_str(v):
    return int(v) if v.lstrip("-").isdigit() else v
def read(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return None
    try:
        return json.load(open(p))
    except ValueError:
        return open(p).read()[-2000:]
steps = [dict(zip(("step", "exit", "ms"), map(int_or_str, l.rstrip("\n").split("\t"))))
         for l in open(os.path.join(out, "steps.tsv"))]
# Per precision: each seed's AUC and training speed, their mean and spread, and bf16 - f32 per seed.
precision = {}
for p in ("f32", "bf16", "f32again"):
    runs = []
    for name in sorted(os.listdir(out)):
        if name.startswith(f"evaluate-{p}-s") and name.endswith(".json"):
            seed = name[len(f"evaluate-{p}-s"):-5]
            ev, tr = read(name), read(f"train-{p}-s{seed}.json")
            if isinstance(ev, dict) and isinstance(tr, dict):
                runs.append({"seed": int(seed), "auc": ev.get("auc"), "samples_per_second": tr.get("samples_per_second")})
    aucs = [r["auc"] for r in runs if isinstance(r["auc"], (int, float))]
    mean = sum(aucs) / len(aucs) if aucs else None
    spread = (sum((a - mean) ** 2 for a in aucs) / (len(aucs) - 1)) ** 0.5 if len(aucs) > 1 else None
    precision[p] = {"runs": runs, "auc_mean": mean, "auc_sd": spread}
by_seed = {p: {r["seed"]: r["auc"] for r in precision[p]["runs"]} for p in precision}
diffs = [by_seed["bf16"][s] - by_seed["f32"][s] for s in by_seed["f32"] if s in by_seed["bf16"]]
precision["bf16_minus_f32_auc"] = diffs
# The same seed trained twice in f32: how far the card's own run-to-run noise moves the AUC.
precision["f32again_minus_f32_auc"] = [by_seed["f32again"][s] - by_seed["f32"][s]
                                       for s in by_seed["f32"] if s in by_seed["f32again"]]
precision["bf16_within_0.001"] = abs(sum(diffs) / len(diffs)) <= 0.001 if diffs else None
print(json.dumps({
    "manifest": open(os.path.join(out, "MANIFEST")).read(),
    "torch": read("torch.json"),
    "steps": steps,
    "bench_default": read("bench-default.json"),
    "bench_paper": read("bench-paper.json"),
    "bench_resident": {p: read(f"bench-resident-{p}.json") for p in ("f32", "bf16")},
    "bench_paper_resident": {p: read(f"bench-paper-resident-{p}.json") for p in ("f32", "bf16")},
    "train_resident": read("train-resident.json"),
    "precision": precision,
    "train": read("train.json"),
    "evaluate": read("evaluate.json"),
    "predictions": read("predictions.json"),
}, indent=2))
PY
cat "$out/steps.tsv" >&2
exit "$first_failure"
