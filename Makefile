# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The server `make test-postgres` runs against; .ci/run creates this role (with CREATEDB) and database.
POSTGRES_URL ?= postgres://chat:chat@127.0.0.1:5432/chat

.PHONY: run test test-postgres setup install migrate admin bench lint format check-deploy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements/base.txt requirements/dev.txt
	$(BIN)/pip install --quiet -r requirements/dev.txt
	touch $@

install: $(VENV)/.installed

setup: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py ensure_admin

## run: set up (venv, requirements, database, first admin) and serve on http://$(HOST):$(PORT)
run: setup
	$(BIN)/python manage.py serve -b $(HOST) -p $(PORT)

## test: the whole suite (needs redis-server and chromium on PATH; .ci/run installs them)
test: install
	$(BIN)/python -m pytest

## test-postgres: the same suite on PostgreSQL at $(POSTGRES_URL) (pytest-django creates test_<name> there)
test-postgres: install
	DATABASE_URL=$(POSTGRES_URL) $(BIN)/python -m pytest

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
