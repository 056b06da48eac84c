#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM slice (one host or many). Where each file lives:
#   your text       $BUCKET/corpus/ (or wherever INPUT_FILES points: gs:// globs)
#   prepared data   $BUCKET/data     written once by `prepare` (worker 0), read by every worker
#   the run         $BUCKET/runs/$RUN  checkpoints, metrics.jsonl, TensorBoard, config.json
#   this checkout   each worker's ~/bert_jax (tracked files only: never your corpus)
# Every worker runs the same `train` command; bert_jax calls jax.distributed.initialize()
# (BERT_JAX_DISTRIBUTED=1) and each host feeds its share of the batch.
#
#   gcloud storage cp my_corpus/*.txt gs://my-bucket/corpus/   # from your machine, once
#   BUCKET=gs://my-bucket launch/tpu_vm.sh create     # the TPU VM (QUEUED=1: a queued resource)
#   BUCKET=gs://my-bucket launch/tpu_vm.sh setup      # copy this checkout to every worker, install
#   BUCKET=gs://my-bucket INPUT_FILES='gs://my-bucket/corpus/*.txt' launch/tpu_vm.sh prepare
#   BUCKET=gs://my-bucket INPUT_FILES='gs://my-bucket/corpus/*.txt' launch/tpu_vm.sh train \
#       [--config.num_train_steps=...]
#   launch/tpu_vm.sh delete
#
# Settings (environment, defaults in brackets): ZONE [us-central2-b], TPU_NAME [bert-jax],
# ACCELERATOR [v4-32], RUNTIME [tpu-ubuntu2204-base], SPOT [0], QUEUED [0], CONFIG
# [configs/demo.py], RUN [bert] (the workdir is $BUCKET/runs/$RUN), MESH [data=-1] (mesh axis
# sizes, e.g. "data=-1 fsdp=4"), INPUT_FILES and VOCAB_FILE [the KJV corpus and vocab bundled in
# the package, as configs/demo.py]: gs:// paths or paths inside the package. `prepare` and
# `train` take the same INPUT_FILES and VOCAB_FILE. The gcloud project is its default one.
#
# Preemption (spot VMs, maintenance): the job saves at the next step on SIGTERM and exits 0;
# running `train` again with the same RUN resumes from that checkpoint.
set -euo pipefail

ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-bert-jax}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-configs/demo.py}"
RUN="${RUN:-bert}"
MESH="${MESH:-data=-1}"
INPUT_FILES="${INPUT_FILES:-bert_jax/assets/kjv.txt.gz}"
VOCAB_FILE="${VOCAB_FILE:-bert_jax/assets/kjv_vocab.txt}"
REMOTE_DIR=bert_jax  # relative to the remote home directory

require_bucket() {
  if [[ "${BUCKET:-}" != gs://* ]]; then
    echo "set BUCKET=gs://your-bucket (data and checkpoints live there)" >&2
    exit 2
  fi
}

on_workers() {  # on_workers WORKERS COMMAND: one ssh command on the given workers ("all" or 0)
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker="$1" --command "$2"
}

spot_flag=()
[[ "${SPOT:-0}" == 1 ]] && spot_flag=(--spot)

case "${1:-}" in
  create)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources create "$TPU_NAME" --node-id "$TPU_NAME" \
        --zone "$ZONE" --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" \
        "${spot_flag[@]}"
      echo "queued; watch: gcloud compute tpus queued-resources describe $TPU_NAME --zone $ZONE"
    else
      gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
        --accelerator-type "$ACCELERATOR" --version "$RUNTIME" "${spot_flag[@]}"
    fi
    ;;
  setup)
    archive="$(mktemp -d)/bert_jax.tar.gz"
    # Tracked files only: an untracked corpus in the checkout stays here (text lives on gs://).
    git -C "$(dirname "$0")/.." ls-files -z --cached |
      tar -C "$(dirname "$0")/.." --null -T - -czf "$archive"
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":bert_jax.tar.gz --zone "$ZONE" --worker=all
    # The gcs extra (gcsfs) lets etils.epath read and write gs:// (metrics, manifests, data).
    on_workers all "mkdir -p $REMOTE_DIR && tar -xzf bert_jax.tar.gz -C $REMOTE_DIR \
      && cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
      && .venv/bin/pip install -q -e '.[tpu,gcs]'"
    ;;
  prepare)
    require_bucket
    on_workers 0 "cd $REMOTE_DIR && .venv/bin/python -m bert_jax.data.prepare \
      --input_files=$(printf '%q' "$INPUT_FILES") --vocab_file=$(printf '%q' "$VOCAB_FILE") \
      --data_dir=$BUCKET/data"
    ;;
  train)
    require_bucket
    shift
    extra=""
    for axis in $MESH; do extra+=" --config.mesh.$axis"; done
    for arg in "$@"; do extra+=" $(printf '%q' "$arg")"; done
    # The prepared data on gs:// is what training reads; input_files/vocab_file name it.
    on_workers all "cd $REMOTE_DIR && BERT_JAX_DISTRIBUTED=1 .venv/bin/python -m bert_jax.pretrain \
      --config $CONFIG --workdir $BUCKET/runs/$RUN --config.data.data_dir=$BUCKET/data \
      --config.data.input_files=$(printf '%q' "$INPUT_FILES") \
      --config.data.vocab_file=$(printf '%q' "$VOCAB_FILE") $extra"
    ;;
  delete)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources delete "$TPU_NAME" --zone "$ZONE" --force --quiet
    else
      gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet
    fi
    ;;
  *)
    sed -n '2,26p' "$0" >&2
    exit 2
    ;;
esac
