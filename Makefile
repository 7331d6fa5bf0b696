# The README's commands. `make setup` is idempotent: a stamp in the venv records that the
# environment matches setup.py, tools/install_detectron2.py and tools/setup_env.sh (the steps);
# a second run does nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.focal_setup.stamp
PYTEST_ARGS ?=

.PHONY: setup demo test test-all lint bench env clean-venv reproduce reproduce-mini reproduce-mini-v3

setup: $(STAMP)

$(STAMP): setup.py tools/install_detectron2.py tools/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash tools/setup_env.sh
	@touch $(STAMP)
	@echo "[setup] environment ready in $(VENV)"

demo: setup
	$(PY) -m focal_plugin.demo $(DEMO_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

test: setup lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

env: setup
	$(PY) -m focal_plugin.collect_env

# The mini reproduction on the CPU protocol: the campaign configs/ablations/campaigns/mini.yaml
# (its steps, in order, two cells at a time; resumable). Cells and reports: results/mini/.
reproduce-mini: setup
	$(PY) tools/pretrain_backbone.py
	$(PY) tools/ablate.py --campaign mini --workers 2

# protocol v3 (configs/mini/protocol_v3/): one backbone per seed, results in results/mini/v3
reproduce-mini-v3: setup
	$(PY) tools/pretrain_backbone.py --seeds 0 1 2
	$(PY) tools/ablate.py --campaign mini_v3 --workers 2

# All benchmarks (CPU; minutes to an hour on 2 cores), one Markdown table in $(BENCH_OUT)/bench.md,
# then the GPU check (skipped with a message where there is no CUDA device). BENCH_ARGS=--quick
# is passed to every script that has it.
BENCH_OUT ?= output/bench
BENCH_ARGS ?=
bench: setup
	@mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_loss.py $(BENCH_ARGS) --json $(BENCH_OUT)/loss.json
	$(PY) benchmarks/bench_train_iter.py $(BENCH_ARGS) --json $(BENCH_OUT)/train.json
	$(PY) benchmarks/bench_inference.py $(BENCH_ARGS) --json $(BENCH_OUT)/inference.json
	$(PY) benchmarks/bench_coco_eval.py $(BENCH_ARGS) --json $(BENCH_OUT)/coco.json
	$(PY) benchmarks/bench_memory.py --json $(BENCH_OUT)/memory.json
	$(PY) benchmarks/report.py --loss $(BENCH_OUT)/loss.json --train $(BENCH_OUT)/train.json \
		--inference $(BENCH_OUT)/inference.json --coco $(BENCH_OUT)/coco.json --out $(BENCH_OUT)/bench.md
	PY=$(PY) bash benchmarks/gpu_check.sh $(BENCH_OUT)/gpu_check

clean-venv:
	rm -rf $(VENV)

# One paper table at mini scale on this machine (or SCALE=paper on a cluster), e.g.
#   make reproduce SPEC=table1b
reproduce: setup
	$(PY) tools/ablate.py --spec $(SPEC) --scale $(or $(SCALE),mini) --workers $(or $(WORKERS),1)
