#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM slice (one host or many), with data and workdir on a gs:// bucket,
# which Orbax and TFDS read and write directly. Every worker runs the same command; bert_jax
# calls jax.distributed.initialize() (BERT_JAX_DISTRIBUTED=1) and each host feeds its share.
#
#   BUCKET=gs://my-bucket launch/tpu_vm.sh create     # the TPU VM (QUEUED=1: a queued resource)
#   BUCKET=gs://my-bucket launch/tpu_vm.sh setup      # copy this checkout to every worker, install
#   BUCKET=gs://my-bucket launch/tpu_vm.sh prepare    # tokenize the corpus into $BUCKET/data once
#   BUCKET=gs://my-bucket launch/tpu_vm.sh train [--config.num_train_steps=...]
#   launch/tpu_vm.sh delete
#
# Settings (environment, defaults in brackets): ZONE [us-central2-b], TPU_NAME [bert-jax],
# ACCELERATOR [v4-32], RUNTIME [tpu-ubuntu2204-base], SPOT [0], QUEUED [0], CONFIG
# [configs/demo.py], RUN [bert] (the workdir is $BUCKET/runs/$RUN), MESH [data=-1] (mesh axis
# sizes, e.g. "data=-1 fsdp=4"), INPUT_FILES and VOCAB_FILE for `prepare` [the bundled KJV
# corpus and vocab, as configs/demo.py]. Paths are relative to the checkout on the workers, and
# `train` needs the same --config.data.input_files/vocab_file as `prepare`. The gcloud project
# is its default one.
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
    git -C "$(dirname "$0")/.." ls-files -z --cached --others --exclude-standard |
      tar -C "$(dirname "$0")/.." --null -T - -czf "$archive"
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":bert_jax.tar.gz --zone "$ZONE" --worker=all
    # gcsfs lets the metric files and checkpoint metadata go to gs:// (etils.epath).
    on_workers all "mkdir -p $REMOTE_DIR && tar -xzf bert_jax.tar.gz -C $REMOTE_DIR \
      && cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
      && .venv/bin/pip install -q -e '.[tpu]' gcsfs"
    ;;
  prepare)
    require_bucket
    on_workers 0 "cd $REMOTE_DIR && .venv/bin/python -m bert_jax.data.prepare \
      --input_files=$INPUT_FILES --vocab_file=$VOCAB_FILE --data_dir=$BUCKET/data"
    ;;
  train)
    require_bucket
    shift
    extra=""
    for axis in $MESH; do extra+=" --config.mesh.$axis"; done
    for arg in "$@"; do extra+=" $(printf '%q' "$arg")"; done
    on_workers all "cd $REMOTE_DIR && BERT_JAX_DISTRIBUTED=1 .venv/bin/python -m bert_jax.pretrain \
      --config $CONFIG --workdir $BUCKET/runs/$RUN --config.data.data_dir=$BUCKET/data \
      $extra"
    ;;
  delete)
    if [[ "${QUEUED:-0}" == 1 ]]; then
      gcloud compute tpus queued-resources delete "$TPU_NAME" --zone "$ZONE" --force --quiet
    else
      gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet
    fi
    ;;
  *)
    sed -n '2,21p' "$0" >&2
    exit 2
    ;;
esac
