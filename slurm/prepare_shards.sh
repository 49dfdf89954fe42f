#!/bin/bash
# Data preparation: raw videos + transcripts (MANIFEST) -> WebDataset shards (SHARDS). The srun
# tasks are MPI ranks (srun --mpi=pmix) that split the inputs; CPU only.
#
#   MANIFEST=/data/raw/manifest.jsonl sbatch slurm/prepare_shards.sh
#   MANIFEST=... PREPARE_ARGS="--fps 10 --size 128 --codec vp9" sbatch --nodes=4 slurm/prepare_shards.sh
#
# Environment: MANIFEST (required), RUNS, SHARDS (default $RUNS/shards), PREPARE_ARGS (more
# videobert-prepare options), OVERWRITE=1 (redo a complete SHARDS dir; by default it is kept and the
# job succeeds at once; a killed run's work is resumed, never redone), SRUN_MPI (pmix), plus VENV / VIDEOBERT_ACTIVATE / TASK_PREFIX / SRUN_ARGS.
# No MPI in the container? SRUN_MPI=none and one task: --ntasks-per-node=1 --nodes=1.
#SBATCH --job-name=vb-prepare
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=32
#SBATCH --cpus-per-task=2
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
_vb_repo=${VIDEOBERT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[ -f "$_vb_repo/launcher/slurm_env.sh" ] || { echo "prepare_shards.sh: error: no VideoBERT-DS checkout at $_vb_repo (submit from the repository or set VIDEOBERT_REPO)" >&2; exit 2; }
_vb_prog=prepare_shards.sh
source "$_vb_repo/launcher/slurm_env.sh"
vb_setup

: "${MANIFEST:?set MANIFEST to the input manifest.jsonl}"
[ -f "$MANIFEST" ] || vb_die "manifest not found: $MANIFEST"
SHARDS=${SHARDS:-$RUNS/shards}
extra=()
if [ -f "$SHARDS/manifest.json" ]; then
  if [ "${OVERWRITE:-0}" != 1 ]; then
    vb_log "$SHARDS already holds a prepared corpus; keeping it (OVERWRITE=1 to redo)"
    exit 0
  fi
  extra+=(--overwrite)
else
  extra+=(--resume)  # a requeued or resubmitted job continues a killed run where it stopped
fi
vb_log "preparing $MANIFEST -> $SHARDS on $SLURM_NTASKS MPI ranks"
# shellcheck disable=SC2086  # PREPARE_ARGS is a word list
vb_mpi "$PYTHON" -m videobert_ds.cli.prepare --manifest "$MANIFEST" --out "$SHARDS" ${PREPARE_ARGS:-} "${extra[@]}" "$@"
