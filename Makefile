# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both build the virtualenv, install streamguard and fetch Apache Kafka's jars (cached) as needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint bench chaos kafka-jars clean

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "streamguard needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

kafka-jars: $(VENV)/.installed
	$(PY) -m streamguard.testing.distribution

demo: kafka-jars
	$(PY) -m examples.demo

test: kafka-jars
	@# the PostgreSQL server is stopped again if this run started it (every test process stops by itself)
	eval "$$(tests/support/postgres.sh)" && { $(VENV)/bin/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ -n "$${STREAMGUARD_PG_STARTED:-}" ]; then tests/support/postgres.sh stop; fi; exit $$rc; }

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check streamguard tests examples benchmarks
	$(VENV)/bin/mypy

bench: kafka-jars
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/pip install -q --no-deps 'quixstreams==3.28.1'
	$(PY) -m benchmarks.run

chaos: kafka-jars
	$(PY) -m streamguard.chaos.battery

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
