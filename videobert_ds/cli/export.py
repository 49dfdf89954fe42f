"""`videobert-export RUN_DIR --out DIR`: a training run's ZeRO-3 checkpoint -> a consolidated Hugging Face model dir.

Reads the run's resolved config.yaml and its newest sound checkpoint (or `--tag`); the stage that trained it
writes the model dir (videobert_ds.training.export). An existing --out is replaced only when it is an earlier
export (holds export.json) or empty, or with --force; never the run dir or a folder above it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from videobert_ds.core.config import ConfigError
from videobert_ds.stages import export_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="videobert-export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a training run dir (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", required=True, help="output model dir")
    parser.add_argument("--tag", help="checkpoint tag (default: the newest complete one)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out that is not an earlier export")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        export_run(args.run_dir, args.out, args.tag, force=args.force)
    except (ConfigError, FileNotFoundError) as err:
        print(f"videobert-export: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
