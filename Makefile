# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install lint bench bench-quick bench-table findings findings-quick clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel

# torch is pinned in constraints.txt (the CPU build on disk here; unpinned pulls CUDA packages).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -c constraints.txt -e '.[test]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medxai demo

test: lint
	$(BIN)/python -m pytest -q

# ruff, then the import layers of pyproject.toml's [tool.importlinter] (an upward import fails)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

# every comparison at full size (~20 min on 2 cores): benchmarks/results/*.json and docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m benchmarks run

# every comparison at tiny size (tests/test_benchmarks.py runs this): benchmarks/results/quick/
bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks run --quick

# rebuild docs/benchmarks.md from benchmarks/results/*.json (after `python -m benchmarks run --only X`)
bench-table: $(STAMP)
	$(BIN)/python -m benchmarks table

# the five studies' claims on their synthetic stand-ins, at the sizes in docs/findings.md (one study:
# python -m benchmarks.findings --only pneumonia): benchmarks/results/findings/*.json and docs/findings.md
findings: $(STAMP)
	$(BIN)/python -m benchmarks.findings

# smoke size (about a minute): benchmarks/results/findings/quick/
findings-quick: $(STAMP)
	$(BIN)/python -m benchmarks.findings --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
