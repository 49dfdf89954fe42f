#!/usr/bin/env bash
# Build .venv with everything VideoBERT-DS needs. Idempotent: a re-run with nothing changed
# returns in seconds. As root (CI, workstations) it apt-installs OpenMPI; on a cluster it uses
# the MPI already loaded (`module load openmpi`) and says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_PIN=${TORCH_PIN:-torch==2.13.0}
STAMP="$VENV/.setup-stamp"
want=$(cat pyproject.toml launcher/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && command -v mpirun >/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

# --- System packages: MPI (mpi4py, videobert-prepare, DeepSpeed's MPI discovery) and a Java runtime
# (the METEOR scorer of pycocoevalcap). Root with apt installs what is missing; elsewhere we say what is.
missing=()
command -v mpicc >/dev/null 2>&1 || missing+=(openmpi-bin libopenmpi-dev)
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing with apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  elif ! command -v mpicc >/dev/null 2>&1; then
    echo "setup: error: no MPI compiler wrapper (mpicc) on PATH; load one first (e.g. 'module load openmpi') or install OpenMPI" >&2
    exit 1
  else
    echo "setup: warning: no java on PATH (e.g. 'module load java'); captioning METEOR will be unavailable" >&2
  fi
fi

# --- Python environment ---
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
# torch first: the pin selects the CPU build here and the CUDA build on GPU clusters, and then
# satisfies pyproject's torch>= range so the editable install does not replace it.
$PIP install "$TORCH_PIN"
$PIP install -e ".[dev]"

echo "$want" > "$STAMP"
echo "setup: done ($($VENV/bin/python -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("torch", "deepspeed", "nvidia-dali-cuda120")))'))"
