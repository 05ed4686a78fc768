# edgeport's front door. Every target takes a fresh clone to its goal and is idempotent.
#   make demo    train the example models, export, check parity everywhere, build and serve the demo
#   make test    the whole test suite (Python, Node's test runner, real Chromium)
#   make bench   the benchmarks, printed as tables

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
NODE_MODULES := web_demo/node_modules

.PHONY: setup demo test test-fast test-js bench clean chromium postgresql jre

setup: $(VENV)/.installed $(NODE_MODULES)/.installed chromium postgresql jre

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# TensorFlow's wheel is 645 MB and a dropped connection once failed a CI run at 620 MB: pip resumes a partial
	@# download (PIP_RESUME_RETRIES, pip >= 25.1) and the whole install is tried three times (wheels already fetched
	@# stay in pip's cache)
	@for attempt in 1 2 3; do \
	  PIP_RESUME_RETRIES=20 PIP_RETRIES=10 $(PY) -m pip install --quiet -e '.[all,dev]' && exit 0; \
	  echo "pip install failed (attempt $$attempt of 3); retrying" >&2; sleep 10; \
	done; echo "error: pip could not install edgeport's dependencies after 3 attempts (see pip's message above)" >&2; exit 1
	@touch $@

$(NODE_MODULES)/.installed: web_demo/package.json web_demo/package-lock.json
	@command -v node >/dev/null || { echo "error: node (>= 20) is not installed; install Node.js 20, e.g. apt-get install -y nodejs npm" >&2; exit 1; }
	cd web_demo && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's chromium is the browser for parity and end-to-end tests; playwright never downloads its own (offline).
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium (apt-get install -y chromium)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "warning: chromium is not on PATH and this is not root: browser tests will be skipped (install: sudo apt-get install -y chromium)" >&2; fi

# Debian's postgresql for the PostgreSQL batch tests: tests/test_batch_postgres.py runs its binaries (initdb, pg_ctl from
# /usr/lib/postgresql/*/bin) as a throwaway cluster of its own; no system service is started or needed.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's postgresql (apt-get install -y postgresql)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "warning: postgresql's initdb is not installed and this is not root: PostgreSQL tests will be skipped (install: sudo apt-get install -y postgresql)" >&2; fi

# Java for Spark (pyspark 4 needs 17 or later: Debian 12's default-jre-headless is OpenJDK 17); tests/test_distributed.py
# runs the mapInPandas recipe in Spark's local mode with it
jre:
	@if command -v java >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's Java runtime (apt-get install -y default-jre-headless)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; \
	else echo "warning: java is not on PATH and this is not root: the Spark test will be skipped (install: sudo apt-get install -y default-jre-headless)" >&2; fi

demo: setup
	$(VENV)/bin/edgeport quickstart

# two workers: much of the suite waits on subprocesses (node, chromium, TensorFlow converters); tests/conftest.py
# groups the tests that share expensive fixtures onto one worker and hands out the slowest groups first
test: setup
	cd web_demo && node --test test/ && node_modules/.bin/tsc -p .
	$(PY) -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder --durations=15

# the JS client alone: node --test, and its .d.ts checked by a type test (web_demo/typecheck/usage.ts)
test-js: setup
	cd web_demo && node --test test/ && node_modules/.bin/tsc -p .

# without TensorFlow and the browser: a quick loop while editing
test-fast: setup
	$(PY) -m pytest -q -m "not tensorflow and not browser"

bench: setup
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq wrk >/dev/null; } || echo "warning: wrk missing; the server bench will be skipped" >&2
	cd bench && ../$(PY) run.py

clean:
	rm -rf out test-artifacts bench/results .pytest_cache
