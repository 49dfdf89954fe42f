#!/bin/bash
# Stage 5: fine-tune a pretrained teacher or student on a downstream task (classification,
# captioning, video QA, retrieval) under DeepSpeed ZeRO-3, one srun task per GPU.
#
#   sbatch slurm/finetune.sh                                         # every task, from runs/student/final
#   CONFIG=finetune_qa INIT=runs/teacher/final sbatch slurm/finetune.sh  # one task, from the teacher
#
# CONFIG: finetune (all four tasks), finetune_classification, finetune_caption, finetune_qa,
# finetune_retrieval, or a YAML path. The model dir brings its tokenizer, visual vocabulary and clip encoder.
# Environment: CONFIG, INIT (exported model dir to start from), DS_CONFIG, RUNS, RUN_DIR, SHARDS,
# LINK_OVERRIDES, OVERRIDES, RESUME, TRAIN_ARGS, plus VENV / VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS.
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

CONFIG=${CONFIG:-finetune}
INIT=${INIT:-$RUNS/student/final}
RUN_DIR=${RUN_DIR:-$RUNS/finetune/$(basename "${CONFIG%.yaml}")/$(basename "$(dirname "$INIT")")}
SHARDS=${SHARDS:-$RUNS/shards}
LINK_OVERRIDES=${LINK_OVERRIDES-model.init=$INIT}
vb_train "$@"
