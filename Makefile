# Quickstart targets: each sets up .venv itself, so they work on a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench bench-quick bench-anchors lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[model,test,serve]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests

demo: $(STAMP)
	$(BIN)/lmqc run examples/seed.lmql --input name=Bob

bench: $(STAMP)
	$(BIN)/python benchmarks/compile.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/compile.py --quick

bench-anchors: $(STAMP)
	$(BIN)/pip install -q -e '.[model,test,anchors]'
	$(BIN)/python benchmarks/anchors.py

lint: $(STAMP)
	$(BIN)/ruff check lmqc compiler runtime tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
