#!/usr/bin/env bash
# Pretraining on a Cloud TPU VM slice (one host or many); docs/cloud_tpu.md walks through it.
#   your text       $BUCKET/corpus/ (or wherever INPUT_FILES points: gs:// globs)
#   vocabulary      VOCAB_FILE, learned by `prepare` when VOCAB_SIZE is set (e.g. gs://B/vocab.txt)
#   prepared data   $BUCKET/data     written once by `prepare` (worker 0), read by every worker
#   the run         $BUCKET/runs/$RUN  checkpoints, metrics.jsonl, TensorBoard, logs/ of each host
#   this checkout   each worker's ~/bert_jax (tracked files only), its .venv and logs/$RUN.log
#
#   export BUCKET=gs://B INPUT_FILES='gs://B/corpus/*.txt' VOCAB_FILE=gs://B/vocab.txt
#   launch/tpu_vm.sh create     # the TPU VM (SPOT=1: spot; QUEUED=1: a queued resource)
#   launch/tpu_vm.sh setup      # every worker: this checkout, Python $PYTHON_VERSION (uv), bert_jax
#   VOCAB_SIZE=30522 launch/tpu_vm.sh prepare   # worker 0: learn VOCAB_FILE, tokenize into $BUCKET/data
#   launch/tpu_vm.sh train [--config.FLAG=...]  # every worker, detached: ssh may drop
#   launch/tpu_vm.sh status | logs [LINES] | stop   # watch it; stop = SIGTERM: save and exit
#   launch/tpu_vm.sh keepalive [--config.FLAG=...]  # train, and recreate + resume after preemption
#   launch/tpu_vm.sh delete
#
# Settings (environment, defaults in brackets): ZONE [us-west4-a], TPU_NAME [bert-jax],
# ACCELERATOR [v5e-16; the planner's names v5e-16, v5p-32, v4-32, v6e-8 or v5e:4x4, or gcloud's
# v5litepod-16], RUNTIME [the generation's: tpu-ubuntu2204-base, v2-alpha-tpuv5-lite,
# v2-alpha-tpuv5, v2-alpha-tpuv6e], SPOT [0], QUEUED [0], CONFIG [configs/demo.py], RUN [bert],
# MESH [data=-1] (e.g. "data=-1 fsdp=4"), INPUT_FILES and VOCAB_FILE [the bundled KJV corpus and
# vocabulary], VOCAB_SIZE [0: VOCAB_FILE exists], PYTHON_VERSION [3.11], INSTALL_ARGS [] (extra
# `uv pip install` arguments, e.g. --index-url=...), CREATE_ARGS [] (extra gcloud create flags,
# e.g. --service-account=...), POLL_SECONDS [300] (keepalive's interval).
# Preemption: the job saves at its next step on SIGTERM and exits 0; `train` again resumes.
set -euo pipefail

ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-bert-jax}"
ACCELERATOR="${ACCELERATOR:-v5e-16}"
CONFIG="${CONFIG:-configs/demo.py}"
RUN="${RUN:-bert}"
MESH="${MESH:-data=-1}"
INPUT_FILES="${INPUT_FILES:-bert_jax/assets/kjv.txt.gz}"
VOCAB_FILE="${VOCAB_FILE:-bert_jax/assets/kjv_vocab.txt}"
VOCAB_SIZE="${VOCAB_SIZE:-0}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
INSTALL_ARGS="${INSTALL_ARGS:-}"
POLL_SECONDS="${POLL_SECONDS:-300}"
REMOTE_DIR=bert_jax  # relative to the remote home directory

fail() {
  echo "$1" >&2
  exit 2
}

# gcloud's accelerator type for the planner's names (v5e-16, v5e:4x4), and the runtime image
# of its generation. v4 and v5p count TensorCores (2 per chip), v5e and v6e count chips.
accelerator_type() {
  local name="$1" generation size chips
  if [[ "$name" =~ ^(v4|v5e|v5p|v6e):([0-9x]+)$ ]]; then
    generation="${BASH_REMATCH[1]}"
    chips=$((${BASH_REMATCH[2]//x/*}))
    size=$chips
    [[ "$generation" == v4 || "$generation" == v5p ]] && size=$((2 * chips))
    name="$generation-$size"
  fi
  case "$name" in
    v5e-*) echo "v5litepod-${name#v5e-}" ;;
    v4-* | v5p-* | v6e-* | v5litepod-*) echo "$name" ;;
    *) fail "ACCELERATOR=$name: use v5e-N, v5p-N, v4-N, v6e-N (or v5e:4x4, v5litepod-N)" ;;
  esac
}

default_runtime() {
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
  esac
}

require_bucket() {
  [[ "${BUCKET:-}" == gs://* ]] || fail "set BUCKET=gs://your-bucket (data and checkpoints live there)"
}

on_workers() {  # on_workers WORKERS COMMAND: one ssh command on the given workers ("all" or 0)
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker="$1" --command "$2"
}

# `cd ~/bert_jax && NAME=value ... launch/tpu_vm.sh VERB ARGS`: the worker side of a verb,
# with this machine's settings (ssh does not carry the environment).
worker_verb() {
  local verb="$1" command name
  shift
  command="cd $REMOTE_DIR &&"
  for name in BUCKET CONFIG RUN MESH INPUT_FILES VOCAB_FILE VOCAB_SIZE PYTHON_VERSION INSTALL_ARGS; do
    command+=" $name=$(printf '%q' "${!name:-}")"
  done
  command+=" launch/tpu_vm.sh $verb"
  for arg in "$@"; do command+=" $(printf '%q' "$arg")"; done
  echo "$command"
}

workdir() { echo "$BUCKET/runs/$RUN"; }

pretrain_args() {  # the pretraining command line every worker runs (after .venv/bin/python)
  local axis
  printf '%s\n' -m bert_jax.pretrain --config "$CONFIG" --workdir "$(workdir)" \
    "--config.data.data_dir=$BUCKET/data" "--config.data.input_files=$INPUT_FILES" \
    "--config.data.vocab_file=$VOCAB_FILE"
  for axis in $MESH; do printf '%s\n' "--config.mesh.$axis"; done
  printf '%s\n' "$@"
}

# Worker side ------------------------------------------------------------------------------------

worker_install() {
  # The image's python3 (3.10 on Ubuntu 22.04) is too old for jax; it only installs uv, which
  # provides Python $PYTHON_VERSION (found on the machine or downloaded) for the venv.
  local uv_dir="$HOME/.bert_jax_uv" pid_file
  for pid_file in logs/*.pid; do  # a running job keeps its venv
    if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
      fail "$(hostname): the job of $pid_file is running; launch/tpu_vm.sh stop it first"
    fi
  done
  if ! "$uv_dir/bin/uv" --version >/dev/null 2>&1; then
    python3 -m pip install -q --disable-pip-version-check --target "$uv_dir" 'uv>=0.8' ||
      fail "$(hostname): could not install uv with python3 -m pip (sudo apt-get install -y python3-pip)"
  fi
  local uv="$uv_dir/bin/uv" args
  "$uv" venv -q --clear --python "$PYTHON_VERSION" .venv
  read -r -a args <<<"$INSTALL_ARGS"
  # The gcs extra (gcsfs) lets etils.epath read and write gs:// (metrics, manifests, data).
  "$uv" pip install -q --python .venv/bin/python -e '.[tpu,gcs]' "${args[@]}"
  local help  # absl's --help exits 1: the check is that the CLI imports and prints its flags
  help="$(.venv/bin/python -m bert_jax.pretrain --help 2>&1 || true)"
  grep -q -- "--workdir" <<<"$help" || fail "$(hostname): bert_jax does not run: $help"
  echo "$(hostname): $(.venv/bin/python --version), bert_jax installed in ~/$REMOTE_DIR/.venv"
}

job_pid() {  # the pid of this worker's running job of $RUN, or nothing
  local pid
  pid="$(cat "logs/$RUN.pid" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

copy_log() {  # logs/$RUN.log -> $WORKDIR/logs/HOST.log (gs:// through etils.epath)
  .venv/bin/python - "logs/$RUN.log" "$(workdir)/logs/$(hostname).log" <<'EOF' || true
import sys
from etils import epath

target = epath.Path(sys.argv[2])
target.parent.mkdir(parents=True, exist_ok=True)
target.write_bytes(epath.Path(sys.argv[1]).read_bytes())
EOF
}

worker_job() {  # runs detached (worker_start): the training process, then its exit status
  local rc=0 copier args
  mapfile -t args < <(pretrain_args "$@")
  # `stop` signals the whole process group: python saves and exits, then this shell goes on.
  trap 'echo "$(date -u +%FT%TZ) SIGTERM: saving at the next step"' TERM
  (while sleep 300; do copy_log; done) &
  copier=$!
  echo "$(date -u +%FT%TZ) $(hostname): .venv/bin/python ${args[*]}"
  BERT_JAX_DISTRIBUTED=1 .venv/bin/python "${args[@]}" || rc=$?
  kill "$copier" 2>/dev/null || true
  echo "$(date -u +%FT%TZ) exit status $rc"
  copy_log
  echo "$rc" >"logs/$RUN.exit"
}

worker_start() {
  mkdir -p logs
  if pid="$(job_pid)" && [[ -n "$pid" ]]; then
    fail "$(hostname): $RUN is already running (pid $pid); launch/tpu_vm.sh stop first"
  fi
  rm -f "logs/$RUN.exit"
  # Its own session, stdin/stdout off the ssh connection: a dropped ssh does not stop it.
  nohup setsid "$0" worker-job "$@" >>"logs/$RUN.log" 2>&1 </dev/null &
  echo "$!" >"logs/$RUN.pid"
  echo "$(hostname): started $RUN (pid $!), log ~/$REMOTE_DIR/logs/$RUN.log"
}

run_progress() {  # the run's last logged step, and "complete" once it has reached the end
  .venv/bin/python - "$(workdir)" <<'EOF'
import json, sys
from etils import epath

workdir = epath.Path(sys.argv[1])
if not (workdir / "config.json").exists():
    sys.exit(print("not started"))
total = json.loads((workdir / "config.json").read_text())["num_train_steps"]
metrics = workdir / "metrics.jsonl"
lines = metrics.read_text().splitlines() if metrics.exists() else []
logged = max((json.loads(line).get("step", 0) for line in lines if line.strip()), default=0)
final = workdir / "final_step.json"
saved = json.loads(final.read_text())["step"] if final.exists() else None
if saved is not None and saved >= total:
    print("complete")
else:
    stop = f"; the last stop saved step {saved}" if saved else ""
    print(f"step {logged} of {total} logged{stop}")
EOF
}

worker_status() {
  local pid state
  pid="$(job_pid)"
  if [[ -n "$pid" ]]; then
    state="running (pid $pid)"
  elif [[ -f "logs/$RUN.exit" ]]; then
    state="exited with status $(cat "logs/$RUN.exit")"
  else
    state="not running"
  fi
  echo "$(hostname): $RUN $state; $(tail -n 1 "logs/$RUN.log" 2>/dev/null | tr '\r' '\n' | tail -n 1)"
  if [[ "${1:-}" == progress ]]; then echo "run $(workdir): $(run_progress)"; fi
}

worker_stop() {  # SIGTERM to the job's process group; waits until it has saved and exited
  local pid waited=0
  pid="$(job_pid)"
  if [[ -z "$pid" ]]; then
    echo "$(hostname): $RUN is not running"
    return
  fi
  kill -TERM -- "-$pid"
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if ((waited % 60 == 0)); then echo "$(hostname): still saving after $waited s"; fi
  done
  echo "$(hostname): $RUN stopped, exit status $(cat "logs/$RUN.exit" 2>/dev/null || echo '?')"
}

# This machine ---------------------------------------------------------------------------------

gcloud_accelerator="$(accelerator_type "$ACCELERATOR")"
RUNTIME="${RUNTIME:-$(default_runtime "$gcloud_accelerator")}"
create_flags=()
[[ "${SPOT:-0}" == 1 ]] && create_flags=(--spot)
read -r -a extra_create_flags <<<"${CREATE_ARGS:-}"
create_flags+=("${extra_create_flags[@]}")

create() {
  if [[ "${QUEUED:-0}" == 1 ]]; then
    gcloud compute tpus queued-resources create "$TPU_NAME" --node-id "$TPU_NAME" \
      --zone "$ZONE" --accelerator-type "$gcloud_accelerator" --runtime-version "$RUNTIME" \
      "${create_flags[@]}"
    echo "queued; watch: gcloud compute tpus queued-resources describe $TPU_NAME --zone $ZONE"
  else
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$gcloud_accelerator" --version "$RUNTIME" "${create_flags[@]}"
  fi
}

setup() {
  local archive root
  root="$(dirname "$0")/.."
  archive="$(mktemp -d)/bert_jax.tar.gz"
  # Tracked files only: an untracked corpus in the checkout stays here (text lives on gs://).
  git -C "$root" ls-files -z --cached | tar -C "$root" --null -T - -czf "$archive"
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME":bert_jax.tar.gz --zone "$ZONE" --worker=all
  on_workers all "mkdir -p $REMOTE_DIR && tar -xzf bert_jax.tar.gz -C $REMOTE_DIR && \
$(worker_verb worker-install)"
}

delete() {
  if [[ "${QUEUED:-0}" == 1 ]]; then
    gcloud compute tpus queued-resources delete "$TPU_NAME" --zone "$ZONE" --force --quiet
  else
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet
  fi
}

vm_state() {  # READY, PREEMPTED, CREATING, ... (a queued resource's state until its VM exists)
  local state
  state="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone "$ZONE" \
    --format='value(state)' 2>/dev/null || true)"
  if [[ -z "$state" && "${QUEUED:-0}" == 1 ]]; then
    state="$(gcloud compute tpus queued-resources describe "$TPU_NAME" --zone "$ZONE" \
      --format='value(state.state)' 2>/dev/null || true)"
  fi
  echo "$state"
}

keepalive() {  # train; whenever the VM is preempted or the job stopped, bring it back and resume
  local state progress fresh=0
  while true; do
    state="$(vm_state)"
    case "$state" in
      READY)
        if ((fresh)); then
          echo "keepalive: setting up the new TPU VM"
          setup && fresh=0
        fi
        progress="$(on_workers all "$(worker_verb worker-status progress)" 2>&1 || true)"
        echo "$progress"
        if grep -q "^run .*: complete$" <<<"$progress"; then
          echo "keepalive: the run is complete"
          return
        fi
        if ! grep -q " running (pid" <<<"$progress"; then
          echo "keepalive: no job running; starting it (it resumes from its last checkpoint)"
          on_workers all "$(worker_verb worker-start "$@")" || true
        elif grep -q -E " (not running|exited with status)" <<<"$progress"; then
          echo "keepalive: a worker's job ended while others run; restarting all of them"
          on_workers all "$(worker_verb worker-stop)" || true
          on_workers all "$(worker_verb worker-start "$@")" || true
        fi
        ;;
      CREATING | STARTING | RESTARTING | REPAIRING | PROVISIONING | WAITING_FOR_RESOURCES | \
        ACCEPTED | DELETING | SUSPENDING)
        echo "keepalive: the TPU VM is $state"
        ;;
      *)  # PREEMPTED, TERMINATED, SUSPENDED, FAILED or gone
        echo "keepalive: the TPU VM is ${state:-gone}; creating it again"
        if [[ -n "$state" ]]; then delete || true; fi
        if create; then
          fresh=1
          continue
        fi
        ;;
    esac
    sleep "$POLL_SECONDS"
  done
}

verb="${1:-}"
[[ $# -gt 0 ]] && shift
case "$verb" in
  create) create ;;
  setup) setup ;;
  prepare)
    require_bucket
    vocab_flag=()
    [[ "$VOCAB_SIZE" != 0 ]] && vocab_flag=("--train_vocab_size=$VOCAB_SIZE")
    on_workers 0 "cd $REMOTE_DIR && .venv/bin/python -m bert_jax.data.prepare \
      --input_files=$(printf '%q' "$INPUT_FILES") --vocab_file=$(printf '%q' "$VOCAB_FILE") \
      --data_dir=$BUCKET/data ${vocab_flag[*]}"
    ;;
  train)
    require_bucket
    on_workers all "$(worker_verb worker-start "$@")"
    echo "watch: launch/tpu_vm.sh status | logs; stop: launch/tpu_vm.sh stop"
    ;;
  status) require_bucket && on_workers all "$(worker_verb worker-status progress)" ;;
  logs)
    [[ "${1:-50}" =~ ^[0-9]+$ ]] || fail "usage: launch/tpu_vm.sh logs [LINES]"
    on_workers 0 "tail -n ${1:-50} $REMOTE_DIR/logs/$(printf '%q' "$RUN").log"
    ;;
  stop) on_workers all "$(worker_verb worker-stop)" ;;
  keepalive) require_bucket && keepalive "$@" ;;
  delete) delete ;;
  worker-install) worker_install ;;
  worker-start) worker_start "$@" ;;
  worker-job) worker_job "$@" ;;
  worker-status) worker_status "$@" ;;
  worker-stop) worker_stop ;;
  *)
    sed -n '2,26p' "$0" >&2
    exit 2
    ;;
esac
