#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded synthetic corpus (see videobert_ds/cli/demo.py).
# Extra arguments pass through, e.g. `bash launcher/demo.sh --force`.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m videobert_ds.cli.demo "$@"
