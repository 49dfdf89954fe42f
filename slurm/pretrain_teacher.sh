#!/bin/bash
# Stage 3: VideoBERT teacher pretraining under DeepSpeed ZeRO-3, one srun task per GPU.
#
#   sbatch slurm/pretrain_teacher.sh                                  # 2 nodes x 8 GPUs, config teacher
#   RUNS=/scratch/vb sbatch --nodes=8 slurm/pretrain_teacher.sh       # any size: options override #SBATCH
#   CONFIG=teacher_tiny OVERRIDES="schedule.max_steps=50" sbatch slurm/pretrain_teacher.sh
#
# Environment: CONFIG, DS_CONFIG, RUNS, RUN_DIR, SHARDS, ENCODER, VOCAB, OVERRIDES, RESUME, TRAIN_ARGS,
# plus VENV / VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS (see launcher/slurm_env.sh).
# The job checkpoints and requeues itself on the warning before its time limit and resumes from the
# newest complete checkpoint in RUN_DIR on every start.
#SBATCH --job-name=vb-teacher
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
_vb_repo=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "pretrain_teacher.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=pretrain_teacher.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-teacher}
RUN_DIR=${RUN_DIR:-$RUNS/teacher}
SHARDS=${SHARDS:-$RUNS/shards}
ENCODER=${ENCODER:-$RUNS/video_encoder/final}
VOCAB=${VOCAB:-$RUNS/vocab/vocab.safetensors}
LINK_OVERRIDES=${LINK_OVERRIDES-visual.encoder=$ENCODER visual.vocab=$VOCAB}
vb_train "$@"
