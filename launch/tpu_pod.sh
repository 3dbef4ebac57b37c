#!/usr/bin/env bash
# Train ECGAN on a Cloud TPU VM slice (v4 / v5p / v5e / v6e, one or many hosts): create the slice,
# install the project on every worker, start the same training command on all workers, stream the
# log of worker 0, delete the slice. `launch/tpu_pod.sh --help` for the options; launch/README.md
# for the whole procedure (quota, datasets on GCS, batch sizes, preemption, costs).
#
# The VM side lives in launch/tpu_worker.sh (copied with the repo). Every gcloud call goes through
# `run`, so `--dry-run` prints exactly the commands a real run would execute.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROG="launch/tpu_pod.sh"
REMOTE_REPO="ecgan_jax"  # on the workers, relative to the SSH user's home directory
WORKER_SCRIPT="$REMOTE_REPO/launch/tpu_worker.sh"

usage() {
  cat <<EOF
usage: $PROG COMMAND [OPTIONS] [-- MAIN_FLAGS...]

Commands:
  create    create the slice (queued resource by default) and wait until it is ready
  setup     copy the repo to every worker, pip install -e ".[dev]" + jax[tpu], check the devices
  check     jax.distributed.initialize() on all workers; prints process and device counts
  train     start the training command on all workers (--worker=all), detached from SSH
  logs      follow the log of one worker (default 0) until its run ends
  status    slice state, and run state on every worker
  ssh       interactive shell on one worker (default 0)
  stop      SIGTERM on all workers: a final checkpoint, then exit (the slice stays up)
  delete    delete the slice (and its queued resource)
  all       create, setup, train, logs, delete (a failure during setup also deletes)

Slice options (each also read from the environment variable in brackets):
  --name NAME             slice name; also the queued-resource id            [ECGAN_TPU_NAME]
  --zone ZONE             e.g. us-central2-b (v4), us-east5-a (v5p), us-east5-b (v6e)  [ECGAN_ZONE]
  --project PROJECT       GCP project; default: gcloud's configured project   [ECGAN_PROJECT]
  --accelerator TYPE      accelerator type, default v4-32 (v5p-64, v5litepod-32, v6e-64, ...)
                                                                              [ECGAN_ACCELERATOR]
  --runtime-version V     TPU software version; default from the generation: v2/v3/v4
                          tpu-ubuntu2204-base, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
                          v6e v2-alpha-tpuv6e                                 [ECGAN_RUNTIME_VERSION]
  --provisioning MODE     queued (gcloud compute tpus queued-resources create, default) or
                          direct (gcloud compute tpus tpu-vm create)          [ECGAN_PROVISIONING]
  --spot                  Spot capacity (cheaper, can be preempted at any time)
  --reserved              use the project's reservation
  --create-flag FLAG      extra flag for the create call, repeatable (e.g. --create-flag=--network=N,
                          --create-flag=--valid-until-duration=6h for queued requests)

Training options:
  --bucket gs://BUCKET    bucket for runs and datasets (required by train/all)  [ECGAN_BUCKET]
  --workdir URI           default BUCKET/runs/NAME (checkpoints, TensorBoard, worker logs)
  --config SPEC           config file[:variant], default configs/cityscapes.py  [ECGAN_CONFIG]
  --tfds-data-dir URI     TFDS data_dir, default BUCKET/tfds; 'none' leaves dataset.source/root
                          to the config (e.g. configs/synthetic.py)
  --source MODE           copy (default: the working tree, uncommitted edits included, via
                          tpu-vm scp) or git (clone --git-url at --git-ref on every worker)
  --git-url URL           repository to clone with --source=git               [ECGAN_GIT_URL]
  --git-ref REF           branch, tag or commit for --source=git (default main)  [ECGAN_GIT_REF]
  --jax-spec SPEC         pip requirement for JAX on the workers, default 'jax[tpu]'
  --upload FILE           setup: also copy FILE into the repo root on every worker, repeatable
                          (e.g. vgg19.npz, then -- --config.perceptual.weights_path=vgg19.npz)

Other options:
  --worker N              worker for logs/ssh (default 0)
  --keep                  all: leave the slice up at the end
  --dry-run               print the commands (one per line) instead of running them
  -h, --help              this text

Everything after -- is passed to 'python -m ecgan_jax.main' on every worker, e.g.
  -- --config.batch_size=256 --config.num_train_steps=200000

Example:
  $PROG all --name=ecgan-v4 --zone=us-central2-b --accelerator=v4-32 --spot \\
      --bucket=gs://my-bucket --config=configs/cityscapes.py -- --config.batch_size=64
EOF
}

die() {
  echo "$PROG: $*" >&2
  exit 2
}

log() {
  ((DRY_RUN)) || echo "[$PROG] $*" >&2
}

single_quote_body() {
  local q="'"
  printf '%s' "${1//$q/$q\\$q$q}"
}

# Prints its arguments as one shell command line, quoting only where the shell needs it.
quote_args() {
  local out="" arg
  local safe='^[A-Za-z0-9_@%+=:,./-]+$' flag='^(--[A-Za-z0-9._-]+=)(.*)$'
  for arg in "$@"; do
    if [[ "$arg" =~ $safe ]]; then
      out+="$arg "
    elif [[ "$arg" =~ $flag ]]; then  # --flag='value' reads better than '--flag=value'
      out+="${BASH_REMATCH[1]}'$(single_quote_body "${BASH_REMATCH[2]}")' "
    else
      out+="'$(single_quote_body "$arg")' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs a command, or with --dry-run prints it on stdout.
run() {
  if ((DRY_RUN)); then
    quote_args "$@"
    return 0
  fi
  log "+ $(quote_args "$@")"
  "$@"
}

# ---------------------------------------------------------------------------------------------
# Options

COMMAND=""
NAME="${ECGAN_TPU_NAME:-}"
ZONE="${ECGAN_ZONE:-}"
PROJECT="${ECGAN_PROJECT:-}"
ACCELERATOR="${ECGAN_ACCELERATOR:-v4-32}"
RUNTIME_VERSION="${ECGAN_RUNTIME_VERSION:-}"
PROVISIONING="${ECGAN_PROVISIONING:-queued}"
CAPACITY=""  # "", spot or reserved
CREATE_FLAGS=()
BUCKET="${ECGAN_BUCKET:-}"
WORKDIR=""
CONFIG="${ECGAN_CONFIG:-configs/cityscapes.py}"
TFDS_DATA_DIR=""
SOURCE="copy"
GIT_URL="${ECGAN_GIT_URL:-}"
GIT_REF="${ECGAN_GIT_REF:-main}"
JAX_SPEC="jax[tpu]"
UPLOADS=()
WORKER="0"
KEEP=0
DRY_RUN=0
MAIN_FLAGS=()

parse_args() {
  if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
  fi
  while [[ $# -gt 0 ]]; do
    local opt="$1" val="" has_val=0
    if [[ "$opt" == --*=* ]]; then
      val="${opt#*=}"
      opt="${opt%%=*}"
      has_val=1
    fi
    case "$opt" in
      -h | --help) usage; exit 0 ;;
      --) shift; MAIN_FLAGS=("$@"); break ;;
      --spot) CAPACITY="spot"; shift; continue ;;
      --reserved) CAPACITY="reserved"; shift; continue ;;
      --keep) KEEP=1; shift; continue ;;
      --dry-run) DRY_RUN=1; shift; continue ;;
      --name | --zone | --project | --accelerator | --runtime-version | --provisioning | \
        --create-flag | --bucket | --workdir | --config | --tfds-data-dir | --source | --git-url | \
        --git-ref | --jax-spec | --upload | --worker)
        if ((!has_val)); then
          [[ $# -ge 2 ]] || die "option $opt needs a value"
          val="$2"
          shift
        fi
        shift
        ;;
      -*) die "unknown option '$opt' (see --help)" ;;
      *)
        [[ -z "$COMMAND" ]] || die "unexpected argument '$opt' (main.py flags go after --)"
        COMMAND="$opt"
        shift
        continue
        ;;
    esac
    case "$opt" in
      --name) NAME="$val" ;;
      --zone) ZONE="$val" ;;
      --project) PROJECT="$val" ;;
      --accelerator) ACCELERATOR="$val" ;;
      --runtime-version) RUNTIME_VERSION="$val" ;;
      --provisioning) PROVISIONING="$val" ;;
      --create-flag) CREATE_FLAGS+=("$val") ;;
      --bucket) BUCKET="$val" ;;
      --workdir) WORKDIR="$val" ;;
      --config) CONFIG="$val" ;;
      --tfds-data-dir) TFDS_DATA_DIR="$val" ;;
      --source) SOURCE="$val" ;;
      --git-url) GIT_URL="$val" ;;
      --git-ref) GIT_REF="$val" ;;
      --jax-spec) JAX_SPEC="$val" ;;
      --upload) UPLOADS+=("$val") ;;
      --worker) WORKER="$val" ;;
    esac
  done
}

default_runtime_version() {
  case "$1" in
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) return 1 ;;
  esac
}

validate() {
  case "$COMMAND" in
    create | setup | check | train | logs | status | ssh | stop | delete | all) ;;
    "") die "no command given (see --help)" ;;
    *) die "unknown command '$COMMAND'; one of: create setup check train logs status ssh stop delete all" ;;
  esac
  [[ -n "$NAME" ]] || die "--name is required (or set ECGAN_TPU_NAME)"
  [[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    die "--name '$NAME': lower-case letters, digits and hyphens, starting with a letter"
  [[ -n "$ZONE" ]] || die "--zone is required (or set ECGAN_ZONE)"
  [[ "$PROVISIONING" == queued || "$PROVISIONING" == direct ]] ||
    die "--provisioning '$PROVISIONING': allowed: queued, direct"
  [[ "$SOURCE" == copy || "$SOURCE" == git ]] || die "--source '$SOURCE': allowed: copy, git"
  [[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker '$WORKER': a worker index (0, 1, ...)"
  if [[ "$COMMAND" == create || "$COMMAND" == all ]]; then
    [[ "$ACCELERATOR" =~ ^v[0-9][a-z0-9]*-[0-9]+$ ]] ||
      die "--accelerator '$ACCELERATOR': a type such as v4-32, v5p-64, v5litepod-32, v6e-64"
    if [[ -z "$RUNTIME_VERSION" ]]; then
      RUNTIME_VERSION="$(default_runtime_version "$ACCELERATOR")" ||
        die "no default runtime version for '$ACCELERATOR': pass --runtime-version"
    fi
  fi
  if [[ "$COMMAND" == setup || "$COMMAND" == all ]] && [[ "$SOURCE" == git ]]; then
    [[ -n "$GIT_URL" ]] || die "--source=git needs --git-url (or ECGAN_GIT_URL)"
  fi
  if [[ "$COMMAND" == setup || "$COMMAND" == all ]]; then
    local f
    for f in ${UPLOADS[@]+"${UPLOADS[@]}"}; do
      [[ -f "$f" ]] || die "--upload '$f': no such file"
    done
  fi
  if [[ "$COMMAND" == train || "$COMMAND" == all ]]; then
    [[ "$BUCKET" == gs://?* ]] || die "--bucket '$BUCKET': a gs://BUCKET[/PREFIX] URI is required"
    BUCKET="${BUCKET%/}"
    [[ -n "$WORKDIR" ]] || WORKDIR="$BUCKET/runs/$NAME"
    [[ -n "$TFDS_DATA_DIR" ]] || TFDS_DATA_DIR="$BUCKET/tfds"
    if [[ "$SOURCE" == copy && ! -f "$REPO_ROOT/${CONFIG%%:*}" ]]; then
      die "--config '$CONFIG': no file ${CONFIG%%:*} in $REPO_ROOT (one of: $(cd "$REPO_ROOT" && echo configs/*.py))"
    fi
  fi
}

# ---------------------------------------------------------------------------------------------
# gcloud helpers

location_flags() {
  LOCATION=(--zone="$ZONE")
  [[ -z "$PROJECT" ]] || LOCATION+=(--project="$PROJECT")
}

# ssh WORKER REMOTE_COMMAND: runs REMOTE_COMMAND (one shell string) on WORKER (a number or all).
ssh_workers() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$1" --command="$2"
}

# Prints the slice state: a queued resource's (WAITING_FOR_RESOURCES, ACTIVE, SUSPENDED, ...) or,
# with --provisioning=direct, the node's (CREATING, READY, PREEMPTED, ...).
slice_state() {
  if [[ "$PROVISIONING" == queued ]]; then
    run gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" \
      --format='value(state.state)'
  else
    run gcloud compute tpus tpu-vm describe "$NAME" "${LOCATION[@]}" --format='value(state)'
  fi
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_create() {
  local capacity=()
  [[ -z "$CAPACITY" ]] || capacity=(--"$CAPACITY")
  if [[ "$PROVISIONING" == queued ]]; then
    run gcloud compute tpus queued-resources create "$NAME" "${LOCATION[@]}" \
      --node-id="$NAME" --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" \
      ${capacity[@]+"${capacity[@]}"} ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
    wait_until_active
  else
    # Synchronous: returns once the node is READY (or fails for lack of capacity).
    run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION" \
      ${capacity[@]+"${capacity[@]}"} ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
  fi
}

wait_until_active() {
  if ((DRY_RUN)); then
    echo "# repeated every 30 s until the state is ACTIVE:"
    slice_state
    return 0
  fi
  local state
  while :; do
    state="$(slice_state)"
    case "$state" in
      ACTIVE) log "queued resource $NAME is ACTIVE"; return 0 ;;
      FAILED | SUSPENDED | SUSPENDING | DELETING)
        die "queued resource $NAME is $state; see: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" ;;
      *) log "queued resource $NAME: ${state:-unknown}; waiting (Ctrl-C stops waiting, the request stays queued)" ;;
    esac
    sleep 30
  done
}

# Retries a step a few times: fresh VMs can refuse SSH for a minute while keys propagate.
with_retries() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    ((DRY_RUN)) && return 0
    log "attempt $attempt failed: $*"
    [[ $attempt -lt 3 ]] && sleep 30
  done
  return 1
}

copy_repo() {
  if [[ "$SOURCE" == git ]]; then
    with_retries ssh_workers all "rm -rf $REMOTE_REPO && $(quote_args git clone -q "$GIT_URL" "$REMOTE_REPO") && $(quote_args git -C "$REMOTE_REPO" checkout -q "$GIT_REF")"
    return 0
  fi
  # The working tree as git sees it (tracked + untracked, minus .gitignore'd: no .venv, runs/).
  local tarball="${TMPDIR:-/tmp}/ecgan_jax-$NAME.tar.gz"
  if ((DRY_RUN)); then
    echo "# local: git ls-files -co --exclude-standard | tar -czf $tarball -T - (in $REPO_ROOT)"
  else
    log "packing the working tree into $tarball"
    (
      cd "$REPO_ROOT"
      git ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
        tar --null -T - -czf "$tarball"
    )
  fi
  with_retries run gcloud compute tpus tpu-vm scp "$tarball" "$NAME:$REMOTE_REPO.tar.gz" \
    "${LOCATION[@]}" --worker=all
  ssh_workers all "rm -rf $REMOTE_REPO && mkdir -p $REMOTE_REPO && tar -xzf $REMOTE_REPO.tar.gz -C $REMOTE_REPO && rm $REMOTE_REPO.tar.gz"
}

cmd_setup() {
  copy_repo
  if [[ ${#UPLOADS[@]} -gt 0 ]]; then
    with_retries run gcloud compute tpus tpu-vm scp "${UPLOADS[@]}" "$NAME:$REMOTE_REPO/" \
      "${LOCATION[@]}" --worker=all
  fi
  local setup="bash $WORKER_SCRIPT setup"
  [[ "$JAX_SPEC" == "jax[tpu]" ]] || setup+=" $(quote_args "$JAX_SPEC")"
  ssh_workers all "$setup"
  cmd_check
}

cmd_check() {
  ssh_workers all "bash $WORKER_SCRIPT check"
}

# The command every worker runs. --distributed=on: main.py calls jax.distributed.initialize(),
# which finds the other workers of the slice from the TPU metadata.
train_command() {
  TRAIN_CMD=(python -m ecgan_jax.main --config="$CONFIG" --workdir="$WORKDIR" --distributed=on)
  if [[ "$TFDS_DATA_DIR" != none ]]; then
    TRAIN_CMD+=(--config.dataset.source=tfds --config.dataset.root="$TFDS_DATA_DIR")
  fi
  TRAIN_CMD+=(${MAIN_FLAGS[@]+"${MAIN_FLAGS[@]}"})
}

cmd_train() {
  train_command
  ssh_workers all "$(quote_args bash "$WORKER_SCRIPT" start --log-uri="$WORKDIR/logs" -- "${TRAIN_CMD[@]}")"
  log "training started; checkpoints and TensorBoard in $WORKDIR"
  log "follow:  $PROG logs --name=$NAME --zone=$ZONE    TensorBoard: tensorboard --logdir=$WORKDIR"
}

cmd_logs() {
  ssh_workers "$WORKER" "bash $WORKER_SCRIPT logs"
}

# Follows worker 0 until its run ends. A dropped SSH connection is retried for as long as the
# slice is up; a preempted or vanished slice ends the wait (the checkpoints are on GCS).
follow_until_done() {
  if ((DRY_RUN)); then
    ssh_workers 0 "bash $WORKER_SCRIPT logs"
    return 0
  fi
  local state
  until ssh_workers 0 "bash $WORKER_SCRIPT logs"; do
    state="$(slice_state 2>/dev/null || true)"
    case "$state" in
      ACTIVE | READY) log "lost the log stream; the slice is $state, reconnecting in 60 s" ;;
      *) log "the slice is ${state:-gone}: stopping the log stream"; return 0 ;;
    esac
    sleep 60
  done
}

cmd_status() {
  slice_state
  ssh_workers all "bash $WORKER_SCRIPT status"
}

cmd_ssh() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" --worker="$WORKER"
}

cmd_stop() {
  ssh_workers all "bash $WORKER_SCRIPT stop"
}

cmd_delete() {
  if [[ "$PROVISIONING" == queued ]]; then
    # --force deletes the node(s) of the request too.
    run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
  fi
}

DELETE_ON_ERROR=0
delete_on_error() {
  local rc=$?
  if ((rc != 0 && DELETE_ON_ERROR && !KEEP)); then
    log "failed before training started (exit $rc): deleting $NAME so it does not keep billing"
    cmd_delete || log "delete failed: check 'gcloud compute tpus queued-resources list --zone=$ZONE'"
  fi
}

cmd_all() {
  cmd_create
  DELETE_ON_ERROR=1
  trap delete_on_error EXIT
  cmd_setup
  cmd_train
  DELETE_ON_ERROR=0
  follow_until_done
  if ((KEEP)); then
    log "--keep: $NAME stays up; '$PROG delete --name=$NAME --zone=$ZONE' when done"
  else
    cmd_delete
  fi
}

main() {
  parse_args "$@"
  validate
  location_flags
  "cmd_$COMMAND"
}

main "$@"
