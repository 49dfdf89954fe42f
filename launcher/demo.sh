#!/usr/bin/env bash
# `make demo`: the whole pipeline on the embedded synthetic corpus (see videobert_ds/cli/demo.py).
# Extra arguments pass through, e.g. `bash launcher/demo.sh --force` or `--narration-noise 0 --narration-offset 0`
# (clean narration; the default trains on 20 % off-screen talk, cues up to 0.5 s off their action).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m videobert_ds.cli.demo "$@"
