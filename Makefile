# One entry point for people and CI. Every target bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export FLASK_APP := wsgi

.PHONY: install run migrate test lint fuzz format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]' \
		|| $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/flask db upgrade

## Web (gunicorn) + Celery worker + beat under one supervisor; Ctrl-C/SIGTERM stops all three.
run: migrate
	$(BIN)/honcho start -f Procfile

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app worker

## schemathesis, every phase and check, fixed seed, against a real gunicorn (tests/fuzz/run.py).
fuzz: install
	$(BIN)/python -m tests.fuzz.run $(FUZZ_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
