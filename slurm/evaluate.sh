#!/bin/bash
# Evaluation of exported models (zero-shot classification, retrieval, captioning) on the test split,
# as the `evaluate` stage of train.py: the srun tasks share the work (one task per GPU).
#
#   sbatch slurm/evaluate.sh                                  # teacher and student of $RUNS
#   MODELS="runs/teacher/final" SPLIT=val sbatch slurm/evaluate.sh
#
# Environment: MODELS (exported model dirs; default: $RUNS/teacher/final and $RUNS/student/final,
# those that exist), CONFIG (eval), SPLIT (test), SHARDS, OUT_DIR ($RUNS/eval; the report of model
# runs/X/final is $OUT_DIR/X/eval.json), DS_CONFIG, OVERRIDES (e.g. "model.zero3=true" for a model too
# big for one GPU), plus VENV / VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS (launcher/slurm_env.sh).
#SBATCH --job-name=vb-eval
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
_vb_repo=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "evaluate.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=evaluate.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-eval}
SHARDS=${SHARDS:-$RUNS/shards}
SPLIT=${SPLIT:-test}
OUT_DIR=${OUT_DIR:-$RUNS/eval}
if [ -z "${MODELS:-}" ]; then
  for m in "$RUNS/teacher/final" "$RUNS/student/final"; do [ -d "$m" ] && MODELS="${MODELS:-} $m"; done
fi
[ -n "${MODELS:-}" ] || vb_die "no exported model to evaluate (set MODELS, or train the teacher first)"
for model in $MODELS; do
  [ -f "$model/config.json" ] || vb_die "not an exported model dir (no config.json): $model"
done
for model in $MODELS; do
  name=$(basename "$(dirname "$(realpath "$model")")")
  RUN_DIR=$OUT_DIR/$name
  DONE_MARKER=$RUN_DIR/eval.json
  LINK_OVERRIDES="model.dir=$model eval.split=$SPLIT"
  if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -f "$DONE_MARKER" ]; then
    vb_log "$DONE_MARKER was written before this job was requeued; skipping $model"
    continue
  fi
  vb_log "evaluating $model on $SHARDS ($SPLIT) -> $DONE_MARKER"
  vb_train "$@" || exit $?
done
