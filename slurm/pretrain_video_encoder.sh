#!/bin/bash
# Stage 1: the clip autoencoder (video encoder) under DeepSpeed ZeRO-3, one srun task per GPU.
#
#   sbatch slurm/pretrain_video_encoder.sh
#   CONFIG=video_encoder_tiny RUNS=/scratch/vb sbatch --nodes=1 slurm/pretrain_video_encoder.sh
#
# Environment: CONFIG, DS_CONFIG, RUNS, RUN_DIR, SHARDS, OVERRIDES, RESUME, TRAIN_ARGS, plus
# VENV / VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS (see launcher/slurm_env.sh).
#SBATCH --job-name=vb-video-encoder
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
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "pretrain_video_encoder.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=pretrain_video_encoder.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-video_encoder}
RUN_DIR=${RUN_DIR:-$RUNS/video_encoder}
SHARDS=${SHARDS:-$RUNS/shards}
vb_train "$@"
