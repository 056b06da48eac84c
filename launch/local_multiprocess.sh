#!/usr/bin/env bash
# Runs one command as N local JAX processes with D CPU devices each, talking gloo over 127.0.0.1:
# the multi-host code paths (jax.distributed, per-process data shares, collective checkpoints)
# on one machine. tests/integration/test_multihost.py uses it.
#
#   launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- COMMAND...
#
#   launch/local_multiprocess.sh -n 2 -d 2 -- .venv/bin/python -m bert_jax.pretrain \
#       --config configs/demo.py:test --workdir runs/mp --config.mesh.data=-1
#
# Each process gets BERT_JAX_COORDINATOR=127.0.0.1:PORT, BERT_JAX_NUM_PROCESSES,
# BERT_JAX_PROCESS_ID, JAX_PLATFORMS=cpu and XLA_FLAGS with the device count; its output lines are
# prefixed with [process i]. SIGTERM/SIGINT are forwarded to every process (a simulated
# preemption). If one process fails the others are stopped, since they would otherwise wait for
# it at the next collective. Exit status: the first failure's, else 0.
set -euo pipefail

processes=2
devices=1
port=""
usage="usage: $0 [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT] -- COMMAND..."
while getopts "n:d:p:h" opt; do
  case "$opt" in
    n) processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ $# -eq 0 || ! "$processes" =~ ^[1-9][0-9]*$ || ! "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "$usage" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port="$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

# Our device count replaces one already in XLA_FLAGS (pytest's conftest sets 8).
xla_flags="$(sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g' <<<"${XLA_FLAGS:-}")"
xla_flags="${xla_flags} --xla_force_host_platform_device_count=${devices}"

pids=()
for ((i = 0; i < processes; i++)); do
  BERT_JAX_COORDINATOR="127.0.0.1:${port}" \
  BERT_JAX_NUM_PROCESSES="$processes" \
  BERT_JAX_PROCESS_ID="$i" \
  JAX_PLATFORMS=cpu \
  XLA_FLAGS="$xla_flags" \
    "$@" > >(sed -u "s/^/[process $i] /") 2>&1 &
  pids+=("$!")
done

signal_all() {
  kill -s "$1" "${pids[@]}" 2>/dev/null || true
}
trap 'signal_all TERM' TERM
trap 'signal_all INT' INT

status=0
running=${#pids[@]}
declare -A finished=()
while ((running > 0)); do
  for pid in "${pids[@]}"; do
    [[ -n "${finished[$pid]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    finished[$pid]=1
    running=$((running - 1))
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "local_multiprocess: a process exited with status $rc; stopping the others" >&2
      signal_all TERM
    fi
  done
  ((running > 0)) && sleep 0.2
done
wait  # the output prefixers
exit "$status"
