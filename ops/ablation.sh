#!/usr/bin/env bash
# The paper's Table 3 (ablations, section 4.5) or Table 2 (baselines) on a generated world, over
# several training seeds: every variant is trained on all days but the last with each seed,
# evaluated on the last day, and the table gives each metric's mean and standard deviation over
# the seeds, with the training speed.
#
#   bash ops/ablation.sh --config configs/demo.toml --lake /tmp/ablation [--seeds "1 2 3"]
#        [--variants "image ids conc maf maf_adv maf_ddma marn"] [--epochs 2] [--out DIR] [--bin PATH]
#        [--table table3]
#   bash ops/ablation.sh --config configs/demo.toml --lake /tmp/ablation --table table2 \
#        --variants "lr fm youtube_net xdeepfm dupn dien dmf mmss naml marn"
#
# The world is generated and its features built when the lake has none. Each run's evaluation
# JSON and the table (<table>.md) go to --out (default: <lake>/ablation). Needs jq and the release
# binary (--bin PATH, else the one of .ci/run's target directory, built if missing). Runs
# already done are kept: two instances with different --variants can share a lake and --out.
set -euo pipefail
cd "$(dirname "$0")/.."

config="" lake="" out="" epochs=2 bin="" table="table3"
seeds="1 2 3"
variants="image ids conc maf maf_adv maf_ddma marn"
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --lake) lake="$2"; shift 2 ;;
    --seeds) seeds="$2"; shift 2 ;;
    --variants) variants="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --table) table="$2"; shift 2 ;;
    *) echo "ablation: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$config" ] && [ -n "$lake" ] || { echo "ablation: --config and --lake are required" >&2; exit 2; }
command -v jq >/dev/null || { echo "ablation: needs jq (apt-get install jq)" >&2; exit 2; }
out="${out:-$lake/ablation}"
mkdir -p "$out"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/marnflow/target}"
bin="${bin:-$CARGO_TARGET_DIR/release/marnflow}"
[ -x "$bin" ] || cargo build --release --bin marnflow
mf() { "$bin" --lake "$lake" --config "$config" "$@"; }

if [ ! -d "$lake/raw/exposures" ]; then
  mf generate >/dev/null
fi
first=$(ls "$lake/raw/exposures" | sed -n 's/^dt=//p' | sort | head -n1)
last=$(ls "$lake/raw/exposures" | sed -n 's/^dt=//p' | sort | tail -n1)
train_to=$(date -d "$last - 1 day" +%F)
if [ ! -d "$lake/features/samples/dt=$last" ]; then
  mf features --from "$first" --to "$last" >/dev/null
fi
echo "ablation: train $first .. $train_to, evaluate $last; seeds: $seeds; variants: $variants" >&2

for variant in $variants; do
  for seed in $seeds; do
    name="$variant-s$seed"
    result="$out/$name.json"
    [ -s "$result" ] && continue
    MARNFLOW_TRAIN_SEED="$seed" mf train --model "$name" --variant "$variant" --from "$first" --to "$train_to" \
      --epochs "$epochs" --json >"$out/$name.train.json"
    mf evaluate --model "$name@v1" --date "$last" --json >"$result"
    # The adversarial game at the end of training, from the version's training record.
    training=$(ls -d "$lake"/models/"$name"/versions/*/ | head -n1)training.json
    jq '.curve[-1] | {importance_accuracy, modality_accuracy, mean_weights, invariant_share}' "$training" \
      >"$out/$name.game.json"
    echo "ablation: $name auc $(jq -r '.auc' "$result")" >&2
  done
done

# mean ± sd over the seeds of one jq expression
stat() {
  local variant="$1" expr="$2" files=()
  for seed in $seeds; do files+=("$out/$variant-s$seed.$3"); done
  jq -s -r "[.[] | ($expr) | select(. != null)] as \$v | if (\$v | length) == 0 then \"-\" else
    (\$v | add / length) as \$m | ((\$v | map((. - \$m) * (. - \$m)) | add) / ((\$v | length) - 1 | if . < 1 then 1 else . end) | sqrt) as \$sd |
    \"\(\$m * 10000 | round / 10000) ± \(\$sd * 10000 | round / 10000)\" end" "${files[@]}"
}

{
  echo "| variant | AUC | AUC deciles 1-3 | AUC unseen items | D0 accuracy | mean w | share of ‖rep‖ from c | train samples/s |"
  echo "|---|---|---|---|---|---|---|---|"
  for variant in $variants; do
    echo "| $variant | $(stat "$variant" '.auc' json) | $(stat "$variant" '[.deciles[:3][] | .auc] | add / length' json) | $(stat "$variant" '.unseen.auc_unseen_rows' json) | $(stat "$variant" '.importance_accuracy' game.json) | $(stat "$variant" 'if .mean_weights then (.mean_weights | add / length) else null end' game.json) | $(stat "$variant" '.invariant_share' game.json) | $(stat "$variant" '.samples_per_second' train.json) |"
  done
} | tee "$out/$table.md"
