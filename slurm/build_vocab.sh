#!/bin/bash
# Stage 2: the visual vocabulary. Every task encodes the clips of its own shards with the frozen
# video encoder; hierarchical k-means runs across all tasks. Writes RUN_DIR/vocab.safetensors.
#
#   sbatch slurm/build_vocab.sh
#   CONFIG=vocab_tiny RUNS=/scratch/vb sbatch slurm/build_vocab.sh
#
# Environment: CONFIG, DS_CONFIG, RUNS, RUN_DIR, SHARDS, ENCODER, OVERRIDES, plus VENV /
# VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS (see launcher/slurm_env.sh). A requeued run starts over.
#SBATCH --job-name=vb-vocab
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
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "build_vocab.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=build_vocab.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

CONFIG=${CONFIG:-vocab}
RUN_DIR=${RUN_DIR:-$RUNS/vocab}
SHARDS=${SHARDS:-$RUNS/shards}
ENCODER=${ENCODER:-$RUNS/video_encoder/final}
LINK_OVERRIDES=${LINK_OVERRIDES-encoder.path=$ENCODER}
DONE_MARKER=${DONE_MARKER:-$RUN_DIR/vocab.safetensors}
vb_train "$@"
