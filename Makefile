# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8080

.PHONY: run test check bench lock demo-upstream clean deb-packages

# Exact versions, with hashes: what the tests ran with is what runs
# (requirements.lock: runtime, also used by deploy/Dockerfile;
# requirements-dev.lock: runtime + tests + checks). Refresh both: `make lock`.
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
COMPILE  := $(BIN)/uv pip compile pyproject.toml --python-version 3.11 \
            --python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --upgrade -q

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime dependencies only; reinstalled when the lock changes.
$(VENV)/.runtime: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(DEV_LOCK) $(VENV)/.runtime
	$(BIN)/python -m pip install -q --require-hashes -r $(DEV_LOCK)
	touch $@

run: $(VENV)/.runtime
	$(BIN)/pixelgate serve --host $(HOST) --port $(PORT)

# Debian packages the tests use: a real Prometheus (and promtool), Chromium and a
# font for the playground's browser tests, Node.js for the browser client's unit tests,
# redis-server for the shared-limits tests and postgresql for the usage ledger's (each
# session starts its own server or cluster).
DEB_PACKAGES := prometheus chromium fonts-liberation nodejs redis-server postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

deb-packages:
	@command -v promtool >/dev/null 2>&1 && [ -x /usr/bin/chromium ] && command -v node >/dev/null 2>&1 \
	  && command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $(DEB_PACKAGES); }

# Lint and import order (ruff), types (mypy), the layers contract (import-linter).
check: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# The official openai Node SDK, pinned by tests/node/package-lock.json (tests/test_node_sdk.py).
NODE_SDK := tests/node/node_modules/.package-lock.json
# NodeSource's nodejs ships npm (and conflicts with Debian's npm package); Debian's does not.
$(NODE_SDK): tests/node/package-lock.json | deb-packages
	@command -v npm >/dev/null 2>&1 || { $(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends npm; }
	npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

test: check deb-packages $(NODE_SDK)
	$(BIN)/python -m pytest -q

lock: $(VENV)/.test
	$(COMPILE) -o $(LOCK)
	$(COMPILE) --extra test -o $(DEV_LOCK)

bench: $(VENV)/.test
	$(BIN)/python -m bench.run

demo-upstream: $(VENV)/.runtime
	$(BIN)/pixelgate demo-upstream --port 9090

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
