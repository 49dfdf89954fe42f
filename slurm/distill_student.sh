#!/bin/bash
# Stage 4: distil the student from the frozen teacher under DeepSpeed ZeRO-3 (both models
# partitioned across all tasks), one srun task per GPU.
#
#   sbatch slurm/distill_student.sh
#   CONFIG=student_tiny TEACHER=runs/teacher/final sbatch slurm/distill_student.sh
#
# Environment: CONFIG, DS_CONFIG, RUNS, RUN_DIR, SHARDS, TEACHER (exported teacher dir or teacher run
# dir; the student reuses its tokenizer, visual vocabulary and clip encoder), OVERRIDES, RESUME,
# TRAIN_ARGS, plus VENV / VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS.
#SBATCH --job-name=vb-student
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
_vb_repo=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "distill_student.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=distill_student.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-student}
RUN_DIR=${RUN_DIR:-$RUNS/student}
SHARDS=${SHARDS:-$RUNS/shards}
TEACHER=${TEACHER:-$RUNS/teacher/final}
LINK_OVERRIDES=${LINK_OVERRIDES-teacher.path=$TEACHER}
vb_train "$@"
