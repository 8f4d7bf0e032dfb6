#!/usr/bin/env bash
# LoRA-train Gemma 3 270M with TRL on one large GPU, then evaluate it against the untuned model, all on the
# same frozen test examples (score mode), with a paired test. Prepared for a GPU machine; nothing in the
# tests or CI runs it, and it has not been run on a GPU yet (no GPU was lent while it was written).
#
#   pip install torch -e '.[all,gemma]'        # a CUDA torch build on the GPU machine; Gemma terms apply
#   bash finetune/gemma_gpu.sh                  # ML-100K (default)
#   DATASET=llara-lastfm bash finetune/gemma_gpu.sh
#
# Steps (each skipped when its output exists, so a rerun resumes): prepare the frozen splits; Stage-1
# neighbours for the test split and for a seeded sample of 9,600 training rows (only those are trained
# on: querying all 80k ML-100K windows takes ~5 min of CPU); SFT (finetune/configs/gemma-270m-$DATASET.yaml,
# bf16, one epoch of 600 steps x 16); evaluation of zero-shot and static M=5 with and without the adapter
# on the whole test split; report + paired comparisons. Timings of every step are printed at the end.
set -euo pipefail
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} LITELLM_LOCAL_MODEL_COST_MAP=True TOKENIZERS_PARALLELISM=false
DATASET=${DATASET:-ml-100k}
D=${ADAPTREC_DATA:-../shared/data}
A=${ARTIFACTS:-artifacts/gpu}
R=${RUNS:-runs/gemma-gpu/$DATASET}
DEVICE=${DEVICE:-cuda}
SAMPLE=${TRAIN_SAMPLE:-9600}
EVAL_LIMIT=${EVAL_LIMIT:-}       # empty: the whole test split
read -r -a SFT_EXTRA <<< "${SFT_ARGS:-}"  # e.g. "--bf16 false --max_steps 2" for a CPU smoke run
CONFIG=finetune/configs/gemma-270m-$DATASET.yaml
[ -f "$CONFIG" ] || { echo "error: no config $CONFIG (DATASET is ml-100k or llara-lastfm)" >&2; exit 2; }
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() or '$DEVICE' == 'cpu' else 3)" || {
  echo "error: torch sees no CUDA device; install a CUDA torch build, or DEVICE=cpu (slow: ~9 s per step)" >&2
  exit 3; }

times=()
step() { # step NAME COMMAND...: run and time it
  local name=$1; shift; local t0=$SECONDS
  echo "== $name" >&2
  "$@"
  times+=("$name: $((SECONDS - t0)) s")
}
ev() { # ev OUT ARGS...: one evaluation, resumable
  local out=$1; shift
  adaptrec eval --data "$A/$DATASET-nb" --lm gemma-3-270m --mode score --device "$DEVICE" --no-progress \
    --out "$out" ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"} "$@"
}

if [ "$DATASET" = ml-100k ]; then
  [ -d "$A/$DATASET" ] || step prepare adaptrec data prepare --dataset ml-100k --raw-dir "$D/ml-100k" --out "$A/$DATASET"
else
  [ -d "$A/$DATASET" ] || step prepare adaptrec data prepare --dataset llara --raw-dir "$D/llara-ref/lastfm" \
    --out "$A/$DATASET"
fi
[ -d "$A/$DATASET-nb" ] || step neighbours adaptrec index neighbors --data "$A/$DATASET" --out "$A/$DATASET-nb" \
  --n 10 --splits train,test --train-sample "$SAMPLE" --chroma-path "$A/chroma"
OUTPUT=$A/sft/gemma-270m-$DATASET
[ -f "$OUTPUT/adapter_config.json" ] || step sft python finetune/sft.py --config "$CONFIG" --data "$A/$DATASET-nb" \
  --output_dir "$OUTPUT" --max_train_examples "$SAMPLE" "${SFT_EXTRA[@]}"
step eval-untuned-zero-shot ev "$R/untuned-zero-shot" --program none
step eval-untuned-static ev "$R/untuned-static-m5" --program static --m 5
step eval-lora-zero-shot ev "$R/lora-zero-shot" --program none --adapter "$OUTPUT"
step eval-lora-static ev "$R/lora-static-m5" --program static --m 5 --adapter "$OUTPUT"
for b in popularity userknn; do
  [ -f "$R/$b/results.json" ] || adaptrec eval --data "$A/$DATASET-nb" --program baseline:$b --out "$R/$b" \
    --no-progress ${EVAL_LIMIT:+--limit "$EVAL_LIMIT"}
done
python eval/report.py "$R"/{popularity,userknn,untuned-zero-shot,untuned-static-m5,lora-zero-shot,lora-static-m5} \
  --out "$R/report" --title "$DATASET test, Gemma 3 270M before/after LoRA (score mode)"
for pair in "untuned-zero-shot lora-zero-shot" "untuned-static-m5 lora-static-m5" "lora-zero-shot lora-static-m5"; do
  set -- $pair
  adaptrec compare "$R/$1" "$R/$2" | tee -a "$R/report/compare.txt"
done
printf '%s\n' "${times[@]}" | tee "$R/report/timings.txt"
