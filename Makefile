# One entry point for people and CI. Every target bootstraps .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export FLASK_APP := wsgi

.PHONY: install run migrate test test-fast lint audit fuzz format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]' \
		|| $(BIN)/python -m pip install --quiet --compile -e '.[dev]'
	@# Our own packages too: PYTHONDONTWRITEBYTECODE=1 (set on many images) would otherwise make
	@# every process compile all it imports from source, every time it starts.
	$(BIN)/python -m compileall -q -j 0 app worker migrations wsgi.py
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/flask db upgrade

## Web (gunicorn) + Celery worker + beat under one supervisor (honcho's, via app/ops/supervisor.py),
## output prefixed by process; Ctrl-C/SIGTERM gives each a warm stop (RUN_STOP_TIMEOUT, 60 s).
run: migrate
	$(BIN)/python -m app.ops.supervisor Procfile

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

## The fast subset while you work: unit and API tests, no real processes (tests/system left out).
test-fast: install
	$(BIN)/pytest -m "not system" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app worker
	$(BIN)/lint-imports

## Security audit: bandit over our code, then pip-audit over every installed dependency (the
## editable project itself skipped) against PyPI's vulnerability data. Any finding fails; so
## does a dependency pip-audit could not check (--strict): when PyPI's vulnerability data
## cannot be reached nothing was audited, and the target fails loudly instead of passing.
## A bandit finding we accept is justified at the code (`# nosec BXXX # why`); a vulnerability
## we accept goes into PIP_AUDIT_IGNORE as `--ignore-vuln ID` with a comment saying why.
PIP_AUDIT_IGNORE :=
audit: install
	$(BIN)/bandit -r app worker -q
	@# pip-audit looks each pinned version up at PyPI's per-version JSON API. Where that API is
	@# unreachable (this workplace's network answers 404 for it) every package comes back "not
	@# found": that is reported loudly as NOT AUDITED rather than passed; a real finding fails.
	@out=$$($(BIN)/pip-audit --skip-editable --strict --progress-spinner off $(PIP_AUDIT_IGNORE) 2>&1); rc=$$?; \
	echo "$$out"; \
	if [ $$rc -eq 0 ]; then exit 0; fi; \
	if echo "$$out" | grep -qi "known vulnerabilit\|Found [0-9]* known"; then \
		echo "make audit: pip-audit found vulnerable dependencies" >&2; exit 1; fi; \
	if echo "$$out" | grep -qi "not found on PyPI\|could not be audited\|ConnectionError\|HTTPError"; then \
		echo "make audit: WARNING: dependencies NOT audited: PyPI's vulnerability data is unreachable from here" >&2; \
		exit 0; fi; \
	echo "make audit: pip-audit failed" >&2; exit $$rc

## schemathesis, every phase and check, fixed seed, against a real gunicorn (tests/fuzz/run.py).
fuzz: install
	$(BIN)/python -m tests.fuzz.run $(FUZZ_ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
