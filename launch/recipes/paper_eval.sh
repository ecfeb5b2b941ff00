#!/usr/bin/env bash
# UNTESTED RECIPE at 8B: no TPU or GPU large enough was reachable where this was written. What was executed
# is the same command line on a tiny model and a local task (tests/test_harness.py).
#
# The paper's LLaDA benchmarks through lm-evaluation-harness (model `proseco_jax`), one command per task:
#   bash launch/recipes/paper_eval.sh humaneval|mbpp|gsm8k|minerva_math|all [vanilla|proseco]
# Tasks and shots as the paper's Table 1: HumanEval 0-shot, MBPP 3-shot, GSM8K 5-shot, Minerva math 4-shot;
# LLaDA's generation settings: 256 generated positions in blocks of 32, greedy (temperature 0), one token
# committed per step by low confidence (T = 256). `vanilla` samples with the block sampler alone (S = 0);
# `proseco` adds the corrector: S corrector iterations after every OMEGA-th step. The (OMEGA, S) of the
# paper's "ProSeCo sampling" row are not stated in what this was written from: set them, or run the sweep
# (launch/harness_sweep.py) and read them off accuracy against NFE.
#
# First, once: a workdir of the model (weights streamed into the mesh's sharding, tokenizer recorded):
#   pip install -e '.[llada,eval]'
#   python launch/convert.py --source=$SOURCE --workdir=$WORKDIR
# The datasets download from the Hugging Face Hub on the first run (online). HumanEval and MBPP execute the
# generated code: run them inside a container or VM.
set -euo pipefail

SOURCE=${SOURCE:-GSAI-ML/LLaDA-8B-Instruct}  # or a ProSeCo fine-tuned LLaDA (directory or hub id)
WORKDIR=${WORKDIR:-runs/llada_8b}
OUT=${OUT:-results/paper_eval}
BATCH=${BATCH:-8}              # answers per compiled sampler call (rounded up to whole data shards)
STEPS=${STEPS:-256}            # T
OMEGA=${OMEGA:-1}              # proseco: corrector every OMEGA-th step
S=${S:-1}                      # proseco: corrector iterations per call
EXTRA=${EXTRA:-}               # more model_args, e.g. ,corrector_rule=top_k
export HF_ALLOW_CODE_EVAL=1    # lm-eval's code_eval metric refuses to run generated code without it

task=${1:-help}
mode=${2:-proseco}
case "$mode" in
  vanilla) corrector="corrector_steps=0" ;;
  proseco) corrector="corrector_every=$OMEGA,corrector_steps=$S" ;;
  *) echo "mode must be vanilla or proseco, got $mode" >&2; exit 2 ;;
esac
model_args="workdir=$WORKDIR,gen_length=256,block_length=32,steps=$STEPS,temperature=0,$corrector$EXTRA"

run() {  # run TASK SHOTS [lm-eval flags...]
  local name=$1 shots=$2
  shift 2
  mkdir -p "$OUT/$mode"
  python launch/harness.py --model proseco_jax \
    --model_args "$model_args,nfe_log=$OUT/$mode/${name}_nfe.jsonl" \
    --tasks "$name" --num_fewshot "$shots" --batch_size "$BATCH" \
    --output_path "$OUT/$mode/$name" --log_samples "$@"
}

case "$task" in
  humaneval)    run humaneval 0 --confirm_run_unsafe_code ;;
  mbpp)         run mbpp 3 --confirm_run_unsafe_code ;;
  gsm8k)        run gsm8k 5 ;;
  minerva_math) run minerva_math 4 ;;
  all)          for t in humaneval mbpp gsm8k minerva_math; do bash "$0" "$t" "$mode"; done ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
