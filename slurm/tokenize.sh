#!/bin/bash
# Stage 2b: token shards. Every task decodes its share of the shards (shard i -> task i % tasks), runs the frozen
# clip encoder and the vocabulary once, and writes RUN_DIR/tokens (visual-word ids + fp16 clip features per
# sample). The teacher, student and fine-tuning then train from them with data.tokens=RUN_DIR/tokens.
#
#   sbatch slurm/tokenize.sh
#   CONFIG=tokenize_tiny RUNS=/scratch/vb sbatch slurm/tokenize.sh
#
# Environment: CONFIG, DS_CONFIG, RUNS, RUN_DIR, SHARDS, ENCODER, VOCAB, OVERRIDES, plus VENV /
# VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS (see launcher/slurm_env.sh). A requeued or resubmitted run keeps
# the token shards already written (same encoder, vocabulary, frames and shards) and does the rest.
#SBATCH --job-name=vb-tokenize
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
_vb_repo=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "tokenize.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=tokenize.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-tokenize}
RUN_DIR=${RUN_DIR:-$RUNS/tokenize}
SHARDS=${SHARDS:-$RUNS/shards}
ENCODER=${ENCODER:-$RUNS/video_encoder/final}
VOCAB=${VOCAB:-$RUNS/vocab/vocab.safetensors}
LINK_OVERRIDES=${LINK_OVERRIDES-visual.encoder=$ENCODER visual.vocab=$VOCAB}
DONE_MARKER=${DONE_MARKER:-$RUN_DIR/tokens/manifest.json}
vb_train "$@"
