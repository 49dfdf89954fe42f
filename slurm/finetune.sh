#!/bin/bash
# Stage 5: fine-tune a pretrained teacher or student on a downstream task (classification,
# captioning, video QA, retrieval) under DeepSpeed ZeRO-3, one srun task per GPU.
#
#   CONFIG=finetune_classification INIT=runs/student/final sbatch slurm/finetune.sh
#
# Environment: CONFIG, INIT (exported model dir to start from), DS_CONFIG, RUNS, RUN_DIR, SHARDS,
# ENCODER, VOCAB, LINK_OVERRIDES, OVERRIDES, RESUME, TRAIN_ARGS, plus VENV / VIDEOBERT_ACTIVATE /
# TASK_PREFIX / SRUN_ARGS.
#SBATCH --job-name=vb-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
_vb_repo=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "finetune.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=finetune.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-finetune_classification}
INIT=${INIT:-$RUNS/student/final}
RUN_DIR=${RUN_DIR:-$RUNS/finetune/$(basename "${CONFIG%.yaml}")/$(basename "$(dirname "$INIT")")}
SHARDS=${SHARDS:-$RUNS/shards}
ENCODER=${ENCODER:-$RUNS/video_encoder/final}
VOCAB=${VOCAB:-$RUNS/vocab/vocab.safetensors}
LINK_OVERRIDES=${LINK_OVERRIDES-model.init=$INIT visual.encoder=$ENCODER visual.vocab=$VOCAB}
vb_train "$@"
