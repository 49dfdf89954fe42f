# shellcheck shell=bash
# Sourced by every slurm/*.sh batch script: finds the checkout, activates the environment and
# runs job steps (one srun task per GPU) so that warnings before the time limit turn into a
# checkpoint and a requeue. Not meant to be executed.
#
# Settings, all from the environment (sbatch exports the submitting shell's environment):
#   VIDEOBERT_REPO      the checkout (default: SLURM_SUBMIT_DIR; sbatch runs a copy of the script,
#                       so $0 does not point into the repository)
#   VIDEOBERT_ACTIVATE  shell code run first, e.g. "module load cuda/12.4; source ~/venvs/vb/bin/activate"
#   VENV                virtual environment to put on PATH (default: $VIDEOBERT_REPO/.venv if present;
#                       "none": leave PATH alone, e.g. when the tasks run in a container)
#   PYTHON              interpreter for the tasks (default: python on PATH after that)
#   TASK_PREFIX         wraps each task's command, e.g. "apptainer exec --nv /images/vb.sif"
#                       (with VENV=none PYTHON=python to use the container's Python)
#   SRUN_ARGS           extra srun options for every step, e.g. "--container-image=... --gpu-bind=none"
#   SRUN_MPI            MPI plugin for data preparation steps (default pmix; "srun --mpi=list" shows yours)
#   RUNS                root of all outputs (default: runs); stage scripts derive RUN_DIR, SHARDS from it
#   REQUEUE_ON_SIGNAL   1 (default): after a USR1 warning the job checkpoints and requeues itself

_vb_prog=${_vb_prog:-$(basename "${BASH_SOURCE[1]:-slurm}")}

vb_die() { echo "$_vb_prog: error: $*" >&2; exit 2; }
vb_log() { echo "[$_vb_prog $(date +%H:%M:%S)] $*" >&2; }

vb_setup() {
  [ -n "${SLURM_JOB_ID:-}" ] || vb_die "not inside a SLURM job: submit it with sbatch (see docs/cluster.md)"
  VIDEOBERT_REPO=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
  [ -f "$VIDEOBERT_REPO/videobert_ds/train.py" ] \
    || vb_die "no VideoBERT-DS checkout at $VIDEOBERT_REPO (submit from the repository or set VIDEOBERT_REPO)"
  cd "$VIDEOBERT_REPO" || vb_die "cannot cd to $VIDEOBERT_REPO"
  export VIDEOBERT_REPO
  if [ -n "${VIDEOBERT_ACTIVATE:-}" ]; then
    eval "$VIDEOBERT_ACTIVATE" || vb_die "VIDEOBERT_ACTIVATE failed: $VIDEOBERT_ACTIVATE"
  fi
  VENV=${VENV:-$VIDEOBERT_REPO/.venv}
  if [ "$VENV" != none ] && [ -x "$VENV/bin/python" ]; then
    export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
  fi
  PYTHON=${PYTHON:-$(command -v python || command -v python3 || echo python3)}
  export PYTHONUNBUFFERED=1
  # One compute thread per allocated CPU unless the user says otherwise (torch's default is all cores).
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  RUNS=${RUNS:-runs}
  vb_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}:" \
         "${SLURM_NTASKS:-1} tasks, ${SLURM_CPUS_PER_TASK:-1} CPUs/task, GPUs/node ${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-0}}; repo $VIDEOBERT_REPO"
}

_vb_signal=""
_vb_step_pid=""
_vb_forward() {
  _vb_signal=$1
  vb_log "received SIG$1: telling the tasks to checkpoint at their next log interval and stop"
  # Always as USR1: srun passes USR1 on to every task as it is, but answers TERM by killing the
  # tasks ("forcing job termination"). The tasks treat USR1 and TERM alike.
  [ -n "$_vb_step_pid" ] && kill -s USR1 "$_vb_step_pid" 2>/dev/null
  return 0
}

# Run one job step in the background and wait for it, passing on USR1 (the --signal=B:USR1@...
# warning: only the batch shell gets it) and TERM (scancel --batch, preemption, scontrol requeue)
# to the tasks through srun. Returns the step's exit status.
vb_step() {
  local rc opts=()
  # Slurm >= 22.05 no longer passes the job's --cpus-per-task on to srun, which would pin each
  # task (and its data-loader threads) to one CPU.
  [ -n "${SLURM_CPUS_PER_TASK:-}" ] && opts+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
  # shellcheck disable=SC2206  # SRUN_ARGS is a word list on purpose
  opts+=(${SRUN_ARGS:-})
  _vb_signal=""
  trap '_vb_forward USR1' USR1
  trap '_vb_forward TERM' TERM
  # srun itself in the background (not a function: that would be a subshell, and the signal
  # would end the subshell instead of reaching srun).
  srun "${opts[@]}" "$@" &
  _vb_step_pid=$!
  # `wait` returns early when a trapped signal arrives: keep waiting until srun is gone.
  while kill -0 "$_vb_step_pid" 2>/dev/null; do
    wait "$_vb_step_pid" 2>/dev/null
  done
  wait "$_vb_step_pid" 2>/dev/null
  rc=$?
  _vb_step_pid=""
  trap - USR1 TERM
  return $rc
}

# Requeue after a USR1 warning unless the stage finished anyway; the next run resumes from the
# checkpoint the tasks just wrote (--resume auto). TERM means Slurm itself is ending the job
# (cancel, time limit, preemption, scontrol requeue): it requeues or not on its own.
_vb_after_step() {
  local rc=$1 done_marker=$2 started=$3
  if [ "$_vb_signal" = USR1 ] && [ "${REQUEUE_ON_SIGNAL:-1}" = 1 ]; then
    if [ -n "$done_marker" ] && [ -e "$done_marker" ] && [ "$(stat -c %Y "$done_marker")" -ge "$started" ]; then
      vb_log "the stage finished before the warning took effect; not requeueing"
      return "$rc"
    fi
    vb_log "step exited with $rc after the warning; requeueing job $SLURM_JOB_ID to resume from its checkpoint"
    if scontrol requeue "$SLURM_JOB_ID"; then
      exit 0
    fi
    vb_die "scontrol requeue failed (job submitted with --no-requeue?); resubmit the same script to resume"
  fi
  [ -n "$_vb_signal" ] && vb_log "step ended with $rc after SIG$_vb_signal"
  return "$rc"
}

# vb_train [train.py args]: the training entry point, one task per GPU of the allocation. Uses
# CONFIG, DS_CONFIG, RUN_DIR, SHARDS, OVERRIDES (dotted key=value words), RESUME, TRAIN_ARGS; the
# arguments (the batch script's: `sbatch slurm/x.sh schedule.max_steps=100`) come last and win.
vb_train() {
  local started rc resume args=()
  : "${CONFIG:?CONFIG (stage YAML name or path) is not set}"
  DS_CONFIG=${DS_CONFIG:-ds_configs/zero3.json}
  [ -f "$DS_CONFIG" ] || vb_die "DeepSpeed config not found: $DS_CONFIG (set DS_CONFIG)"
  [ -n "${RUN_DIR:-}" ] && args+=("run.dir=$RUN_DIR")
  [ -n "${SHARDS:-}" ] && args+=("data.shards=$SHARDS")
  # shellcheck disable=SC2206  # overrides are space-separated key=value words
  args+=(${LINK_OVERRIDES:-} ${OVERRIDES:-})
  resume=${RESUME:-auto}
  # RESUME=<checkpoint dir> seeds a new run (e.g. a universal checkpoint); once the run has complete
  # checkpoints of its own, a requeued or resubmitted job must continue from those instead.
  if [ "$resume" != auto ] && [ "$resume" != none ] && [ -n "${RUN_DIR:-}" ] && [ -s "$RUN_DIR/checkpoints/latest" ]; then
    vb_log "$RUN_DIR has checkpoints of its own ($(cat "$RUN_DIR/checkpoints/latest")): resuming from them, not from $resume"
    resume=auto
  fi
  started=$(date +%s)
  vb_log "train.py: config $CONFIG, DeepSpeed $DS_CONFIG, run dir ${RUN_DIR:-(from config)}, resume $resume"
  # shellcheck disable=SC2086
  vb_step --kill-on-bad-exit=1 ${TASK_PREFIX:-} "$PYTHON" -m videobert_ds.cli.launch exec -- \
    "$PYTHON" videobert_ds/train.py --deepspeed "$DS_CONFIG" --config "$CONFIG" --resume "$resume" \
    ${TRAIN_ARGS:-} "${args[@]}" "$@"
  rc=$?
  _vb_after_step "$rc" "${DONE_MARKER:-${RUN_DIR:+$RUN_DIR/final}}" "$started"
}

# vb_mpi CMD...: a CPU step whose tasks are MPI ranks (srun --mpi=$SRUN_MPI), e.g. videobert-prepare.
vb_mpi() {
  # shellcheck disable=SC2086
  vb_step --kill-on-bad-exit=1 --mpi="${SRUN_MPI:-pmix}" ${TASK_PREFIX:-} "$@"
}

# vb_tasks CMD...: a step of plain distributed tasks (torch.distributed env mapped), e.g. evaluation.
vb_tasks() {
  # shellcheck disable=SC2086
  vb_step --kill-on-bad-exit=1 ${TASK_PREFIX:-} "$PYTHON" -m videobert_ds.cli.launch exec -- "$@"
}
