# The one task runner. `make dev` and `make test` bootstrap everything they need from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: install dev test lint format migrate worker cli talk bench bench-quick clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

dev: $(STAMP)
	$(PY) -m scripts.dev

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app scripts main.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

migrate: $(STAMP)
	$(PY) -m scripts.dev --migrate-only

worker: $(STAMP)
	$(PY) -m app.worker

# The operator CLI beside `make dev`: make cli ARGS="create-tenant --name … --slug …"
cli: $(STAMP)
	@$(PY) -m app.cli $(ARGS)

# Call your agent from the terminal: make talk ARGS="--number +14155550100"
talk: $(STAMP)
	@$(PY) -m app.cli talk $(ARGS)

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick
