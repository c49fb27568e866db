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

.PHONY: run test test-deps test-postgres setup install install-ldap migrate admin bench lint format check-deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements/base.txt requirements/dev.txt
	$(BIN)/pip install --quiet -r requirements/dev.txt
	touch $@

install: $(VENV)/.installed

# LDAP sign-in's optional requirements: python-ldap compiles against OpenLDAP's
# headers (scripts/test-deps installs them), so `make run` does not need them.
$(VENV)/.installed-ldap: $(VENV)/.installed requirements/ldap.txt
	$(BIN)/pip install --quiet -r requirements/ldap.txt
	touch $@

install-ldap: $(VENV)/.installed-ldap

setup: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin

## run: set up (venv, requirements, database, first admin) and serve on http://$(HOST):$(PORT)
run: setup
	$(BIN)/python manage.py serve -b $(HOST) -p $(PORT)

## test: the whole suite, after scripts/test-deps installs the servers it runs (redis-server, chromium, nginx, PostgreSQL, slapd)
test: test-deps install install-ldap
	$(BIN)/python -m pytest

## test-deps: install the servers the suite runs when missing (as root with apt; otherwise prints the command)
test-deps:
	scripts/test-deps

## test-postgres: the same suite on PostgreSQL: POSTGRES_URL, else the local cluster (pytest-django creates test_<name> there)
test-postgres: test-deps install install-ldap
	url="$$POSTGRES_URL"; [ -n "$$url" ] || url=$$(scripts/test-deps --postgres) || exit 1; \
	DATABASE_URL="$$url" $(BIN)/python -m pytest

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
