#!/usr/bin/env bash
# ECGAN on N GPU nodes x G GPUs with SLURM. The arguments are python -m ecgan_jax.main's flags:
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/gpu_multinode.sh \
#       --config=configs/cityscapes.py --workdir=/shared/runs/cityscapes \
#       --config.dataset.root=/shared/data/cityscapes --config.batch_size=64
#
# Layout: ONE PROCESS PER NODE (the default, --ntasks-per-node=1), each process driving all G GPUs
# of its node, as on a TPU host: one input pipeline per node, config.batch_size (the GLOBAL batch)
# a multiple of N*G and of N. For one process per GPU submit with --ntasks-per-node=G instead;
# the script handles both (see JAX_LOCAL_DEVICE_IDS below).
#
# Multi-process setup: jax.distributed.initialize() detects SLURM on its own (coordinator = first
# node of the step, process count/id = SLURM_NTASKS/SLURM_PROCID), but it then assumes one process
# per GPU (local devices = [SLURM_LOCALID]). So this script also exports, for every task:
#   ECGAN_COORDINATOR_ADDRESS  first node of the job, port ECGAN_COORDINATOR_PORT (default derived
#                              from the job id, so two jobs sharing a node do not collide)
#   ECGAN_NUM_PROCESSES        SLURM_NTASKS
#   ECGAN_PROCESS_ID           SLURM_PROCID
#   JAX_LOCAL_DEVICE_IDS       0..G-1 with one process per node; 0 with one GPU visible per task
# which ecgan_jax.main passes to jax.distributed.initialize() explicitly.
#
# Environment knobs (sbatch exports the submitting shell's environment by default):
#   ECGAN_VENV      virtualenv to activate on every node (default: none, the current python)
#   ECGAN_REPO      repository root on the shared filesystem (default: the submit directory)
#   ECGAN_DRY_RUN=1 every task prints its process id, coordinator, JAX_LOCAL_DEVICE_IDS and the
#                   command instead of running it
#
# Preemption / time limit: --signal=TERM@300 makes SLURM send SIGTERM to the training processes
# 5 minutes before the limit; train.py then writes a checkpoint and exits. Submitting the same
# command again (same --workdir) resumes from the latest checkpoint; --requeue lets SLURM do it
# after a node failure or preemption.
#
#SBATCH --job-name=ecgan
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -eq 0 || "$1" == "-h" || "$1" == "--help" ]]; then
  awk 'NR > 1 && /^#SBATCH/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"
  [[ $# -eq 0 ]] && exit 2
  exit 0
fi
: "${SLURM_JOB_ID:?not inside a SLURM job: submit with sbatch (see --help)}"
: "${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set}"
: "${SLURM_NTASKS:?SLURM_NTASKS is not set}"

cd "${ECGAN_REPO:-${SLURM_SUBMIT_DIR:-.}}"
if [[ -n "${ECGAN_VENV:-}" ]]; then
  # shellcheck disable=SC1091
  . "$ECGAN_VENV/bin/activate"
fi

# Same rule as JAX's own SLURM detection: a port in [61440, 65535] picked by the job id.
COORDINATOR_HOST="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
COORDINATOR_PORT="${ECGAN_COORDINATOR_PORT:-$((61440 + SLURM_JOB_ID % 4096))}"
export ECGAN_COORDINATOR_ADDRESS="$COORDINATOR_HOST:$COORDINATOR_PORT"
export ECGAN_NUM_PROCESSES="$SLURM_NTASKS"

# Runs once per task (srun): the per-task process id and the GPUs this process drives.
read -r -d '' TASK_SCRIPT <<'EOF' || true
set -euo pipefail
export ECGAN_PROCESS_ID="$SLURM_PROCID"
tasks_on_node="${SLURM_STEP_TASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}"
tasks_on_node="${tasks_on_node%%[(,]*}"
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
  num_gpus="${#gpus[@]}"
else
  num_gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
fi
if [[ -z "${JAX_LOCAL_DEVICE_IDS:-}" ]]; then
  if [[ "$tasks_on_node" == 1 && "$num_gpus" -gt 0 ]]; then
    JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((num_gpus - 1)))"  # one process drives every GPU
    export JAX_LOCAL_DEVICE_IDS
  elif [[ "$num_gpus" == 1 ]]; then
    export JAX_LOCAL_DEVICE_IDS=0  # --gpus-per-task=1: the task sees only its own GPU
  fi  # else: every GPU visible to every task; JAX picks GPU SLURM_LOCALID
fi
if [[ "${ECGAN_DRY_RUN:-0}" == 1 ]]; then
  echo "task $ECGAN_PROCESS_ID/$ECGAN_NUM_PROCESSES on $(hostname): coordinator=$ECGAN_COORDINATOR_ADDRESS JAX_LOCAL_DEVICE_IDS=${JAX_LOCAL_DEVICE_IDS:-<jax default>}: $*"
  exit 0
fi
exec "$@"
EOF

CMD=(python -m ecgan_jax.main "$@")
echo "job $SLURM_JOB_ID: $SLURM_NTASKS process(es) on ${SLURM_JOB_NUM_NODES:-?} node(s); coordinator $ECGAN_COORDINATOR_ADDRESS"
echo "command: ${CMD[*]}"
# --kill-on-bad-exit: one failed process ends the step instead of leaving the others hanging in
# a collective.
srun --kill-on-bad-exit=1 bash -c "$TASK_SCRIPT" ecgan-task "${CMD[@]}"
