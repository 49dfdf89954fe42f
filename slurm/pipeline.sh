#!/bin/bash
# Submit the whole pipeline as SLURM jobs chained with --dependency=afterok: each stage starts only
# when the one before it succeeded; if one fails, the rest are cancelled (--kill-on-invalid-dep).
# Run it from a login node (not with sbatch).
#
#   MANIFEST=/data/raw/manifest.jsonl RUNS=/scratch/vb slurm/pipeline.sh
#   slurm/pipeline.sh --stages "teacher student evaluate"        # a part of it
#   slurm/pipeline.sh --dry-run                                  # print the sbatch commands
#   slurm/pipeline.sh --wait                                     # block until the last job ends
#
# Stages, in order: prepare video_encoder vocab tokenize teacher student finetune evaluate.
# When tokenize is submitted (or its token shards exist), teacher, student and finetune train from them
# (data.tokens=$RUNS/tokenize/tokens: no video decoded); OVERRIDES="data.tokens=" decodes the frames instead.
# Environment:
#   MANIFEST            input manifest for `prepare` (needed unless SHARDS is already complete)
#   RUNS                root of every output (default: runs); SHARDS defaults to $RUNS/shards
#   STAGES              stages to submit (same as --stages)
#   CONFIG_SUFFIX       appended to every default stage config, e.g. _tiny (teacher -> teacher_tiny)
#   <STAGE>_CONFIG      one stage's config, e.g. TEACHER_CONFIG=/path/my_teacher.yaml
#   DS_CONFIG           DeepSpeed JSON for every training stage (default ds_configs/zero3.json);
#                       <STAGE>_DS_CONFIG for one
#   OVERRIDES           dotted overrides for every training stage; <STAGE>_OVERRIDES for one
#   SBATCH_ARGS         extra sbatch options for every job; <STAGE>_SBATCH_ARGS for one
#                       (e.g. TEACHER_SBATCH_ARGS="--nodes=8 --time=72:00:00")
#   DEPENDENCY          a dependency for the first job (e.g. afterok:1234)
#   FORCE=1             submit stages whose outputs already exist (default: skip them)
# and everything launcher/slurm_env.sh reads (VENV, VIDEOBERT_ACTIVATE, TASK_PREFIX, SRUN_ARGS, ...).
set -euo pipefail
PROG=pipeline.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_STAGES="prepare video_encoder vocab tokenize teacher student finetune evaluate"

die() { echo "$PROG: error: $*" >&2; exit 2; }

dry_run=0 wait_end=0
STAGES=${STAGES:-$ALL_STAGES}
while [ $# -gt 0 ]; do
  case $1 in
    --stages) [ $# -ge 2 ] || die "--stages needs a list"; STAGES=$2; shift 2 ;;
    --stages=*) STAGES=${1#--stages=}; shift ;;
    --dry-run) dry_run=1; shift ;;
    --wait) wait_end=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# stage -> script, default config (empty: not a train.py stage), output that marks it done
script_of() {
  case $1 in
    prepare) echo prepare_shards.sh ;; video_encoder) echo pretrain_video_encoder.sh ;;
    vocab) echo build_vocab.sh ;; tokenize) echo tokenize.sh ;; teacher) echo pretrain_teacher.sh ;;
    student) echo distill_student.sh ;;
    finetune) echo finetune.sh ;; evaluate) echo evaluate.sh ;; *) return 1 ;;
  esac
}
config_of() {
  case $1 in
    video_encoder) echo video_encoder ;; vocab) echo vocab ;; tokenize) echo tokenize ;; teacher) echo teacher ;;
    student) echo student ;; finetune) echo finetune ;; evaluate) echo eval ;; *) echo "" ;;
  esac
}
done_marker() {
  case $1 in
    prepare) echo "$SHARDS/manifest.json" ;; vocab) echo "$RUNS/vocab/vocab.safetensors" ;;
    tokenize) echo "$TOKENS/manifest.json" ;;
    video_encoder|teacher|student) echo "$RUNS/$1/final/config.json" ;;
    finetune) echo "$RUNS/finetune/finetune${CONFIG_SUFFIX:-}/student/final/config.json" ;; *) echo "" ;;
  esac
}

# Ordered and validated; unknown names are an error, not silently skipped.
selected=()
for s in $STAGES; do script_of "$s" >/dev/null || die "unknown stage '$s' (stages: $ALL_STAGES)"; done
for s in $ALL_STAGES; do
  case " $STAGES " in *" $s "*) selected+=("$s") ;; esac
done
[ ${#selected[@]} -gt 0 ] || die "no stages selected"

# Absolute paths: the jobs run in the repository, this script may be run from anywhere.
RUNS=$(realpath -m "${RUNS:-runs}")
SHARDS=$(realpath -m "${SHARDS:-$RUNS/shards}")
[ -n "${MANIFEST:-}" ] && MANIFEST=$(realpath -m "$MANIFEST")
abs_config() {  # a DeepSpeed JSON given relative to here; names the jobs resolve in the repo stay as they are
  case $1 in /*|"") echo "$1" ;; *) if [ -f "$1" ]; then realpath "$1"; else echo "$1"; fi ;; esac
}
case " ${selected[*]} " in
  *" prepare "*)
    [ -n "${MANIFEST:-}" ] || [ -f "$SHARDS/manifest.json" ] || die "set MANIFEST (input manifest.jsonl) for the prepare stage"
    [ -z "${MANIFEST:-}" ] || [ -f "$MANIFEST" ] || die "manifest not found: $MANIFEST" ;;
esac
# The training stages read token shards when the tokenize stage runs now or ran before.
TOKENS=$RUNS/tokenize/tokens
use_tokens=0
case " ${selected[*]} " in *" tokenize "*) use_tokens=1 ;; esac
if [ -f "$TOKENS/manifest.json" ]; then use_tokens=1; fi
command -v sbatch >/dev/null || [ $dry_run = 1 ] || die "sbatch not found: run this on a SLURM login node (or launcher/local_cluster.sh start)"
mkdir -p "$RUNS/logs"

dep=${DEPENDENCY:-}
jobs=()
fake_id=1000
for s in "${selected[@]}"; do
  up=$(echo "$s" | tr '[:lower:]' '[:upper:]')
  marker=$(done_marker "$s")
  if [ "${FORCE:-0}" != 1 ] && [ -n "$marker" ] && [ -e "$marker" ]; then
    echo "$PROG: $s: already done ($marker); skipped (FORCE=1 to redo)"
    continue
  fi
  cfg_var=${up}_CONFIG ovr_var=${up}_OVERRIDES sb_var=${up}_SBATCH_ARGS ds_var=${up}_DS_CONFIG
  default_cfg=$(config_of "$s")
  tokens=""  # first, so the caller's OVERRIDES (e.g. data.tokens=) win
  case $s in teacher|student|finetune) if [ $use_tokens = 1 ]; then tokens="data.tokens=$TOKENS "; fi ;; esac
  cfg=${!cfg_var:-${default_cfg:+$default_cfg${CONFIG_SUFFIX:-}}}
  # Per-stage values; a RUN_DIR/CONFIG left in the caller's environment must not leak into every stage.
  stage_env=(-u RUN_DIR -u CONFIG -u LINK_OVERRIDES -u DONE_MARKER -u DS_CONFIG
             VIDEOBERT_REPO="$REPO" RUNS="$RUNS" SHARDS="$SHARDS"
             OVERRIDES="$tokens${OVERRIDES:-} ${!ovr_var:-}")
  [ -n "$cfg" ] && stage_env+=(CONFIG="$cfg")
  [ -n "${MANIFEST:-}" ] && stage_env+=(MANIFEST="$MANIFEST")
  ds=$(abs_config "${!ds_var:-${DS_CONFIG:-}}")
  [ -n "$ds" ] && stage_env+=(DS_CONFIG="$ds")
  args=(--parsable --job-name="vb-$s" --output="$RUNS/logs/%x-%j.out")
  [ -n "$dep" ] && args+=(--dependency="$dep" --kill-on-invalid-dep=yes)
  # shellcheck disable=SC2206  # sbatch option lists
  args+=(${SBATCH_ARGS:-} ${!sb_var:-})
  if [ $dry_run = 1 ]; then
    printf '%q ' env "${stage_env[@]}" sbatch "${args[@]}"; printf '%q\n' "$REPO/slurm/$(script_of "$s")"
    id=$((fake_id += 1))
  else
    out=$(cd "$REPO" && env "${stage_env[@]}" sbatch "${args[@]}" "$REPO/slurm/$(script_of "$s")") \
      || die "sbatch failed for stage $s"
    id=${out%%;*}
    echo "$PROG: $s: job $id${cfg:+ (config $cfg)}${dep:+ after $dep}"
  fi
  jobs+=("$s:$id")
  dep="afterok:$id"
done

[ ${#jobs[@]} -gt 0 ] || { echo "$PROG: nothing to submit"; exit 0; }
[ $dry_run = 1 ] || printf '%s\n' "${jobs[@]}" > "$RUNS/logs/pipeline.jobs"
echo "$PROG: logs in $RUNS/logs; watch with: squeue -j $(printf '%s\n' "${jobs[@]}" | cut -d: -f2 | paste -sd,)"
[ $wait_end = 1 ] && [ $dry_run = 0 ] || exit 0

# --wait: poll until every job is finished, then print each one's final state.
job_state() {  # COMPLETED / FAILED / CANCELLED / PENDING / RUNNING ... or empty once forgotten
  local st
  st=$(scontrol show job -o "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
  if [ -z "$st" ] && command -v sacct >/dev/null; then
    st=$(sacct -n -X -P -j "$1" -o State 2>/dev/null | head -1 | cut -d' ' -f1 || true)
  fi
  echo "$st"
}
status=0
for entry in "${jobs[@]}"; do
  s=${entry%%:*} id=${entry##*:}
  unknown=0
  while :; do
    st=$(job_state "$id")
    case $st in
      PENDING|RUNNING|CONFIGURING|COMPLETING|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|RESIZING|SUSPENDED|SIGNALING|STAGE_OUT) ;;
      "") unknown=$((unknown + 1)); [ $unknown -lt 5 ] || { st=UNKNOWN; break; } ;;  # forgotten, no sacct
      *) break ;;
    esac
    sleep "${PIPELINE_POLL:-5}"
  done
  echo "$PROG: $s: job $id $st"
  [ "$st" = COMPLETED ] || status=1
done
exit $status
