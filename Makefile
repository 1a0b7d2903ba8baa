# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test bench demo-upstream clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime dependencies only; reinstalled when pyproject.toml changes.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.runtime
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.runtime
	$(BIN)/pixelgate serve --host $(HOST) --port $(PORT)

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python -m bench.run

demo-upstream: $(VENV)/.runtime
	$(BIN)/pixelgate demo-upstream --port 9090

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
