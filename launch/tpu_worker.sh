#!/usr/bin/env bash
# The TPU-VM side of launch/tpu_pod.sh: runs ON each worker of a slice, from the copy of the repo
# that tpu_pod.sh put in ~/ecgan_jax. Not meant for a laptop.
#
#   tpu_worker.sh setup [JAX_SPEC]   python3.11 venv in ~/ecgan_venv, pip install -e ".[dev]" JAX_SPEC
#                                    (default "jax[tpu]"; pip picks the version setup.cfg allows)
#   tpu_worker.sh check              jax.distributed.initialize() + device counts (all workers at once)
#   tpu_worker.sh start [--log-uri=gs://...] -- CMD ARGS...
#                                    runs CMD in the venv, detached (nohup + setsid, so an SSH drop
#                                    does not kill it), from the repo root; log in ~/ecgan_run/train.log;
#                                    at the end the log is copied to LOG_URI/<hostname>.log
#   tpu_worker.sh status             running / finished with exit code N / not started
#   tpu_worker.sh logs [N]           last N lines (default 100), then follows until the run ends
#   tpu_worker.sh stop               SIGTERM to the training process (it checkpoints, then exits)
#
# Paths can be moved with ECGAN_VENV_DIR, ECGAN_RUN_DIR and ECGAN_PYTHON (the interpreter that
# creates the venv; setup.cfg needs >= 3.11, the TPU images ship 3.10, so setup apt-installs it).
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${ECGAN_VENV_DIR:-$HOME/ecgan_venv}"
RUN_DIR="${ECGAN_RUN_DIR:-$HOME/ecgan_run}"
PYTHON="${ECGAN_PYTHON:-python3.11}"
LOG="$RUN_DIR/train.log"
SUPERVISOR_PID="$RUN_DIR/supervisor.pid"
CHILD_PID="$RUN_DIR/pid"
EXIT_CODE="$RUN_DIR/exit_code"

die() {
  echo "tpu_worker.sh ($(hostname)): $*" >&2
  exit 1
}

is_running() {
  [[ -f "$SUPERVISOR_PID" ]] && kill -0 "$(cat "$SUPERVISOR_PID")" 2>/dev/null
}

cmd_setup() {
  local jax_spec="${1:-jax[tpu]}"
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    # Fresh TPU VMs often run unattended-upgrades at boot: wait for the dpkg lock instead of failing.
    sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      "$PYTHON" "$PYTHON-venv"
  fi
  [[ -x "$VENV_DIR/bin/python" ]] || "$PYTHON" -m venv "$VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install -q --upgrade pip
  # One resolver run for both, so jax[tpu] lands inside the jax range that setup.cfg pins.
  (cd "$REPO_DIR" && "$VENV_DIR/bin/python" -m pip install -q -e ".[dev]" "$jax_spec")
  "$VENV_DIR/bin/python" -c 'import jax; print("installed jax", jax.__version__)'
}

cmd_check() {
  # Every worker must run this at the same time (tpu_pod.sh uses --worker=all): initialize()
  # waits for all processes of the slice.
  "$VENV_DIR/bin/python" - <<'PY'
import socket

import jax

jax.distributed.initialize()
print(
    f"{socket.gethostname()}: process {jax.process_index()} of {jax.process_count()}, "
    f"{jax.local_device_count()} local / {jax.device_count()} global devices "
    f"({jax.devices()[0].device_kind}); config.batch_size must be a multiple of "
    f"{jax.device_count()}"
)
PY
}

cmd_start() {
  local log_uri=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --log-uri=*) log_uri="${1#*=}"; shift ;;
      --) shift; break ;;
      *) break ;;
    esac
  done
  [[ $# -gt 0 ]] || die "start: no command given (usage: start [--log-uri=URI] -- CMD ARGS...)"
  [[ -x "$VENV_DIR/bin/python" ]] || die "no venv at $VENV_DIR: run 'tpu_worker.sh setup' first"
  if is_running; then
    die "a run is already in progress (supervisor pid $(cat "$SUPERVISOR_PID")); 'stop' it first"
  fi
  mkdir -p "$RUN_DIR"
  rm -f "$EXIT_CODE" "$CHILD_PID"
  cd "$REPO_DIR"
  ECGAN_LOG_URI="$log_uri" nohup setsid bash "$SELF" _supervise "$@" >>"$LOG" 2>&1 </dev/null &
  # Recorded here as well as by the supervisor, so `logs` right after `start` sees the run.
  echo "$!" >"$SUPERVISOR_PID"
  echo "$(hostname): started, log in $LOG"
}

# Runs detached: starts CMD, forwards SIGTERM to it (a preempted VM or `stop` sends it; train.py
# then writes a final checkpoint), records the exit code and copies the log to GCS.
cmd_supervise() {
  echo "$$" >"$SUPERVISOR_PID"
  # shellcheck disable=SC1091
  . "$VENV_DIR/bin/activate"
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): $*"
  "$@" &
  local child=$!
  echo "$child" >"$CHILD_PID"
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
  local rc
  while :; do
    rc=0
    wait "$child" || rc=$?
    # A trap interrupts `wait` early (rc > 128) while the child still runs: wait again.
    kill -0 "$child" 2>/dev/null || break
  done
  echo "$rc" >"$EXIT_CODE"
  echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): exit code $rc"
  if [[ -n "${ECGAN_LOG_URI:-}" ]]; then
    local dest
    dest="${ECGAN_LOG_URI%/}/$(hostname).log"
    if command -v gcloud >/dev/null 2>&1; then
      gcloud storage cp --quiet "$LOG" "$dest" || echo "could not copy the log to $dest"
    elif command -v gsutil >/dev/null 2>&1; then
      gsutil -q cp "$LOG" "$dest" || echo "could not copy the log to $dest"
    fi
  fi
  rm -f "$SUPERVISOR_PID"
  return "$rc"
}

cmd_status() {
  if is_running; then
    echo "$(hostname): running (pid $(cat "$CHILD_PID" 2>/dev/null || echo '?'))"
  elif [[ -f "$EXIT_CODE" ]]; then
    echo "$(hostname): finished, exit code $(cat "$EXIT_CODE")"
  else
    echo "$(hostname): no run started"
  fi
}

cmd_logs() {
  local lines="${1:-100}"
  [[ -f "$LOG" ]] || die "no log at $LOG yet"
  local pid
  # Read the pid once: the supervisor removes its pid file when it exits.
  pid=$(cat "$SUPERVISOR_PID" 2>/dev/null || true)
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    # --pid ends the tail once the supervisor has exited (after its last line).
    tail -n "$lines" -F --pid="$pid" "$LOG"
  else
    tail -n "$lines" "$LOG"
  fi
  cmd_status
}

cmd_stop() {
  if ! is_running; then
    cmd_status
    return 0
  fi
  kill -TERM "$(cat "$CHILD_PID")"
  echo "$(hostname): sent SIGTERM to pid $(cat "$CHILD_PID")"
}

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    setup) cmd_setup "$@" ;;
    check) cmd_check ;;
    start) cmd_start "$@" ;;
    _supervise) cmd_supervise "$@" ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    stop) cmd_stop ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$SELF" ;;
    *) die "unknown command '$cmd'; one of: setup, check, start, status, logs, stop" ;;
  esac
}

main "$@"
