# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# A PostgreSQL server of yours for `make test-postgres` (a role that may create
# databases); unset, scripts/test-deps starts the local cluster and gives its URL.
# Exported, so that recipes read it from the environment and never echo its password.
POSTGRES_URL ?=
export POSTGRES_URL

.PHONY: run test test-deps test-postgres setup install install-ldap lock migrate admin bench lint format check-deploy clean

# Every install comes from a lock (requirements/*.lock, written by `make lock`
# from the *.in files) with a hash for each file: a changed upload fails the install.
PIP_INSTALL := $(BIN)/pip install --quiet --require-hashes

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements/build.lock requirements/dev.lock
	$(PIP_INSTALL) -r requirements/build.lock
	$(PIP_INSTALL) -r requirements/dev.lock
	touch $@

install: $(VENV)/.installed

# LDAP sign-in's optional requirements: python-ldap compiles against OpenLDAP's
# headers (scripts/test-deps installs them), so `make run` does not need them.
# No build isolation: python-ldap builds with build.lock's setuptools, not an unhashed download.
$(VENV)/.installed-ldap: $(VENV)/.installed requirements/ldap.lock
	$(PIP_INSTALL) --no-build-isolation -r requirements/ldap.lock
	touch $@

install-ldap: $(VENV)/.installed-ldap

## lock: rewrite requirements/*.lock from the pins in requirements/*.in (every transitive dependency, with hashes)
# For CI's and the image's Python (3.11, Linux x86_64) whatever machine runs it. An existing
# lock's versions are kept unless an input changed; the other locks take base.lock's versions,
# so a package in two locks is the same release in both. A dependency of a dependency (not
# pinned in an .in file) moves only when asked: make lock LOCK_FLAGS="--upgrade-package urllib3".
LOCK_FLAGS ?=
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-unknown-linux-gnu --custom-compile-command "make lock" $(LOCK_FLAGS)
lock: install
	$(UV_COMPILE) requirements/build.in -o requirements/build.lock
	$(UV_COMPILE) requirements/base.in -o requirements/base.lock
	for name in production dev ldap; do \
		$(UV_COMPILE) requirements/$$name.in -c requirements/base.lock -o requirements/$$name.lock || exit 1; \
	done

setup: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin

## run: set up (venv, requirements, database, first admin) and serve on http://$(HOST):$(PORT)
# serve --ensure-admin makes the first admin itself, so its start-up ends with one block: the address to
# open and, on the first start, the admin's name and password.
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py serve --ensure-admin -b $(HOST) -p $(PORT)

# The suite on 3 worker processes (pytest-xdist), a file per worker at a time (module-scoped servers
# start once); TEST_WORKERS=0 runs it in this process. Most tests wait on real servers, not the CPU:
# on 2 cores, 2 workers kept about one core busy.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

## test: the whole suite, after scripts/test-deps installs the servers it runs (redis-server, chromium, nginx, PostgreSQL, slapd)
test: test-deps install install-ldap
	$(PYTEST)

## test-deps: install the servers the suite runs when missing (as root with apt; otherwise prints the command)
test-deps:
	scripts/test-deps

## test-postgres: the tests that reach the database, on PostgreSQL: POSTGRES_URL, else the local cluster
# (pytest-django creates test_<name> there). `-m database` is the rule in tests/conftest.py (reaches_the_database):
# a test that uses the run's database, through Django (django_db, a db fixture) or real server processes (processes,
# stack_factory), runs on both engines; the rest (Chromium pages, providers, SSE parsing, settings) only in `make test`.
test-postgres: test-deps install install-ldap
	url="$$POSTGRES_URL"; [ -n "$$url" ] || url=$$(scripts/test-deps --postgres) || exit 1; \
	DATABASE_URL="$$url" $(PYTEST) -m database

bench: install
	$(BIN)/python -m bench

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

## check-deploy: Django's deployment checks on the production settings, with a production-like environment
check-deploy: install
	env -u DEBUG SECRET_KEY=$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))') \
	ALLOWED_HOSTS=chat.example.com CSRF_TRUSTED_ORIGINS=https://chat.example.com \
	DJANGO_SETTINGS_MODULE=config.settings.production $(BIN)/python manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
