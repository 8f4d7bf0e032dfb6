#!/usr/bin/env bash
# Which Stage-3 score mode reads the user rather than the list position? Gemma 3 270M (untuned) on the
# first LIMIT ML-100K *validation* users (test stays untouched), zero-shot and static M = 5, in each score mode;
# each report shows HR@1 with CIs and where the top-1s sit in the candidate list (docs/results/score-modes-*).
# Usage: bash scripts/score_modes.sh   (after scripts/docs_runs.sh has built artifacts/ml-100k-nb)
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
LIMIT=${LIMIT:-40}
for mode in score score-calibrated score-permuted; do
  echo "== $mode" >&2
  adaptrec experiment --data artifacts/ml-100k-nb --split valid --lm gemma-3-270m --out runs/score-modes/$mode \
    --mode $mode --variants none,static --m-values "" --limit "$LIMIT" --chunk "$LIMIT" \
    --report docs/results/score-modes-$mode \
    --title "ML-100K valid (first $LIMIT users), Gemma 3 270M, --mode $mode"
done
