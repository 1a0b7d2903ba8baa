# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test bench demo-upstream clean deb-packages

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

# Debian packages the tests use: a real Prometheus (and promtool), Chromium and a
# font for the playground's browser tests, Node.js for the browser client's unit tests,
# and redis-server for the shared-limits tests (each session starts its own).
DEB_PACKAGES := prometheus chromium fonts-liberation nodejs redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deb-packages:
	@command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/chromium ] && command -v node >/dev/null 2>&1 \
	  && command -v redis-server >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(DEB_PACKAGES); }

test: $(VENV)/.test deb-packages
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python -m bench.run

demo-upstream: $(VENV)/.runtime
	$(BIN)/pixelgate demo-upstream --port 9090

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
