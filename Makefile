# One entry point for people and CI. Every target bootstraps .venv itself, from uv.lock.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# uv lives outside .venv: `uv sync` makes .venv exactly the lock, and would remove itself.
UV_VERSION := 0.13.9
UV_DIR := .tools/uv-$(UV_VERSION)
UV     := $(UV_DIR)/bin/uv
# Two installs (docs/operations.md, "Dependencies"): the runtime one for `make run`, the dev one
# (runtime + the `dev` group + the `monitoring` extra) for everything else.
RUNTIME_STAMP := $(VENV)/.runtime-stamp
DEV_STAMP     := $(VENV)/.dev-stamp
# --locked: install exactly uv.lock, and refuse a lock that no longer matches pyproject.toml.
SYNC := $(UV) sync --locked --quiet --compile-bytecode
# `make lock` upgrades every pin; `make lock LOCK_ARGS="--upgrade-package flask"` just one;
# `make lock LOCK_ARGS=` only re-locks after an edit to pyproject.toml, upgrading nothing.
LOCK_ARGS ?= --upgrade
export FLASK_APP := wsgi

.PHONY: install run migrate test test-fast lint audit fuzz format lock graphql-schema clean

$(UV):
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target $(UV_DIR) uv==$(UV_VERSION)

$(BIN)/python: | $(UV)
	$(UV) venv --quiet --python $(PYTHON) $(VENV)

# Our own packages are compiled too: PYTHONDONTWRITEBYTECODE=1 (set on many images) would
# otherwise make every process compile all it imports from source, every time it starts.
COMPILE_OWN := $(BIN)/python -m compileall -q -j 0 app worker migrations wsgi.py

# Runtime only. --inexact: after a `make test` this keeps the dev tools instead of removing them.
$(RUNTIME_STAMP): pyproject.toml uv.lock | $(BIN)/python
	$(SYNC) --no-dev --inexact
	$(COMPILE_OWN)
	touch $@

# Exact: whatever the lock no longer names is removed. It satisfies the runtime install too.
$(DEV_STAMP): pyproject.toml uv.lock | $(BIN)/python
	$(SYNC) --extra monitoring
	$(COMPILE_OWN)
	touch $@ $(RUNTIME_STAMP)

install: $(DEV_STAMP)

## Re-resolve uv.lock (see LOCK_ARGS above); the next make target installs the new pins.
lock: | $(UV)
	$(UV) lock $(LOCK_ARGS)

migrate: $(RUNTIME_STAMP)
	$(BIN)/flask db upgrade

## Web (gunicorn) + Celery worker + beat under one supervisor (honcho's, via app/ops/supervisor.py),
## output prefixed by process; Ctrl-C/SIGTERM gives each a warm stop (RUN_STOP_TIMEOUT, 60 s).
run: migrate
	$(BIN)/python -m app.ops.supervisor Procfile

## Tests run in PYTEST_WORKERS parallel processes (pytest-xdist; `auto`: one per CPU), each on a
## database and Redis db number of its own (tests/support/parallel.py); PYTEST_WORKERS=0 runs them
## in one process. A module marked xdist_group runs on one worker (its module-scoped fixture once).
## PYTHONDONTWRITEBYTECODE is cleared for pytest alone: it caches the test modules it rewrites
## only where Python may write bytecode, and would otherwise rewrite ~180 at every start.
PYTEST_WORKERS ?= auto
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

## The whole suite in two parts: everything but the timing drills (marked serial) in parallel, then
## the drills alone in one process, so no other test shares the CPU with their latency bounds.
## A part that selects nothing (pytest's exit 5) passes; the target fails if either part fails.
test: install
	@$(PYTEST) --serial=exclude $(PYTEST_ARGS); parallel=$$?; [ $$parallel -ne 5 ] || parallel=0; \
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest $(PYTEST_ARGS) -n 0 --serial=only; serial=$$?; \
	[ $$serial -ne 5 ] || serial=0; \
	echo "make test: parallel part exit $$parallel, serial part exit $$serial"; \
	[ $$parallel -eq 0 ] && [ $$serial -eq 0 ]

## The fast subset while you work: unit and API tests, no real processes (tests/system left out).
test-fast: install
	$(PYTEST) -m "not system" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy app worker
	$(BIN)/lint-imports

## Security audit: bandit over our code, then pip-audit over every installed dependency (the
## editable project itself skipped) against PyPI's vulnerability data. Any finding fails. When
## that data cannot be reached nothing was audited: the target prints "WARNING: dependencies NOT
## audited" and exits 0 (CI's network answers 404 for that API; failing would fail every run).
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

## docs/schema.graphql from the code's GraphQL schema (tests/api/test_graphql_api.py fails on drift).
graphql-schema: install
	$(BIN)/python -m app.graphql.sdl

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .tools instance .pytest_cache .mypy_cache .ruff_cache
