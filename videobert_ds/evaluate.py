"""Script entry of the evaluation for launchers that run a file (deepspeed, torchrun, srun):

    deepspeed --num_gpus 8 videobert_ds/evaluate.py --model MODEL_DIR --zero3

The same as `videobert-eval` (videobert_ds/cli/eval.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by the deepspeed launcher
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videobert_ds.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
