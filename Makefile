# Every target builds .venv first (launcher/setup.sh is a no-op in seconds when nothing changed).
PY := .venv/bin/python
SETUP_STAMP := .venv/.setup-stamp

.PHONY: setup demo demo-clean test lint format bench bench-data bench-kmeans bench-prepare bench-train bench-gpu bench-noise tensorboard clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml launcher/setup.sh
	bash launcher/setup.sh

demo: setup
	bash launcher/demo.sh

demo-clean:
	rm -rf runs/demo

# Lint first: a style slip fails in seconds instead of after the multi-rank tests.
# .venv/bin first on PATH: one ninja for every process, so DeepSpeed's JIT ops are built once.
test: setup lint
	PATH="$(CURDIR)/.venv/bin:$$PATH" $(PY) -m pytest -q tests

# What CI checks: ruff's lint rules and formatting (settings in pyproject.toml).
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# Rewrite the tree to pass `make lint` (safe fixes only, then the formatter).
format: setup
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# One table of every CPU-sized benchmark (loaders, visual-word assignment, ZeRO-3 vs ZeRO-0 step and memory),
# then prepare's throughput beside plain ffmpeg (its own table).
bench: demo
	$(PY) -m videobert_ds.bench
	command -v ffmpeg >/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m videobert_ds.bench.prepare

bench-data: setup
	$(PY) -m videobert_ds.bench.data

bench-kmeans: setup
	$(PY) -m videobert_ds.bench.kmeans

# videobert-prepare beside one plain ffmpeg command a clip on the same synthetic videos (videos/s, clips/s per core).
bench-prepare: setup
	command -v ffmpeg >/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) -m videobert_ds.bench.prepare

bench-train: demo
	$(PY) -m videobert_ds.bench.train

# The teacher trained and evaluated at narration noise 0, 0.3 and 0.6 (its own corpus per level; ~20 min on
# 2 cores): how each metric degrades as training narration stops describing the clip (docs/benchmarks.md).
bench-noise: setup
	$(PY) -m videobert_ds.bench.noise

# Every GPU check in one call (<= 8 min): the BERT-large teacher's bf16 ZeRO-3 step (tokens/s, MFU, memory, host
# syncs) and NVDEC decoding. Without a GPU it prints one line and exits 0.
bench-gpu: setup
	$(PY) -m videobert_ds.bench.gpu

tensorboard: setup
	.venv/bin/tensorboard --logdir runs/demo --host 127.0.0.1 --port $${PORT:-6006}

clean:
	rm -rf .venv runs
