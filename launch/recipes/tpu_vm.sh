#!/usr/bin/env bash
# UNTESTED RECIPE: no TPU was reachable where this was written. What was executed is the ahead-of-time
# compile of step 0 (launch/aot_compile.py, on a CPU machine). Read it, set the variables, run it a step at
# a time (bash launch/recipes/tpu_vm.sh STEP), and check each step's output before the next.
#
# Trains configs/owt_small.py on a multi-host Cloud TPU slice: every worker runs the same command with
# --multihost (jax.distributed.initialize() finds its peers on a TPU VM by itself); checkpoints and
# metrics go to a GCS bucket mounted with gcsfuse on every worker.
set -euo pipefail

TPU_NAME=${TPU_NAME:-proseco-v5e-64}
ZONE=${ZONE:-us-west4-a}
# Slice type and the VM image for it (the accelerator names count chips for v5e/v6e, TensorCores for
# v4/v5p; the topology name for launch/aot_compile.py in brackets):
#   v5litepod-8  v2-alpha-tpuv5-lite  [v5e:2x4]      v5litepod-64  v2-alpha-tpuv5-lite  [v5e:8x8]
#   v4-32        tpu-ubuntu2204-base  [v4:2x2x4]     v5p-128       v2-alpha-tpuv5       [v5p:4x4x4]
#   v6e-64       v2-alpha-tpuv6e      [v6e:8x8]
ACCELERATOR=${ACCELERATOR:-v5litepod-64}
VERSION=${VERSION:-v2-alpha-tpuv5-lite}
TOPOLOGY=${TOPOLOGY:-v5e:8x8}
BUCKET=${BUCKET:-}      # a GCS bucket in the slice's region, without gs://
REPO_URL=${REPO_URL:-}  # where this repository can be cloned from
RUN=${RUN:-owt_small}
# owt_small's batch of 512 over a (data, fsdp=8) mesh; see launch/recipes/README.md for what fits where.
FLAGS=${FLAGS:---config=configs/owt_small.py --config.mesh.fsdp=8}

need() {
  [[ -n "${!1}" ]] || { echo "set $1 first" >&2; exit 2; }
}

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}

case "${1:-help}" in
  0-aot)  # On your own machine (pip install -e '.[tpu]'): compile for the slice, check that it fits. This
          # command with these defaults was executed (README, the v5e:8x8 row of the table).
    python launch/aot_compile.py $FLAGS --topology="$TOPOLOGY"
    ;;
  1-create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$VERSION"
    ;;
  2-install)  # The same code and the same packages on every worker.
    need REPO_URL
    on_all_workers "git clone $REPO_URL proseco_jax && cd proseco_jax && python3 -m pip install -q -e '.[tpu]'"
    ;;
  3-mount)  # The workdir must be one directory that every worker sees: orbax writes each host's shards
            # there. The project writes metrics.jsonl and config.json with plain file I/O, so a gs:// path
            # is not accepted as --workdir; the bucket is mounted instead.
    need BUCKET
    on_all_workers "(command -v gcsfuse || (sudo apt-get update -q && sudo apt-get install -y -q gcsfuse)) \
      && mkdir -p ~/gcs && gcsfuse --implicit-dirs $BUCKET ~/gcs"
    ;;
  4-data)  # The corpus prepared once, offline (launch/prepare_data.py with the data flags that FLAGS passes
           # to training, see configs/owt_small.py), uploaded to gs://$BUCKET/data, copied to each worker.
    need BUCKET
    on_all_workers "mkdir -p ~/data && gcloud storage cp -r 'gs://$BUCKET/data/*' ~/data/"
    ;;
  5-train)  # Rerunning this step resumes from the latest checkpoint in the workdir.
    on_all_workers "cd ~/proseco_jax && nohup python3 launch/train.py --multihost $FLAGS \
      --workdir=\$HOME/gcs/runs/$RUN --config.data.data_dir=\$HOME/data > ~/train.log 2>&1 &"
    ;;
  6-watch)  # Worker 0 prints the progress lines and writes metrics.jsonl.
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=0 --command="tail -n 20 ~/train.log"
    ;;
  7-stop)  # SIGTERM (to any worker) stops every worker at the same step: train.py agrees on it across
            # processes, all save their part of that checkpoint and exit; step 5 resumes from it.
    on_all_workers "pkill -TERM -f 'launch/train.py' || true"
    ;;
  8-delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: [BUCKET=... REPO_URL=...] bash $0 {0-aot|1-create|2-install|3-mount|4-data|5-train|6-watch|7-stop|8-delete}"
    ;;
esac
