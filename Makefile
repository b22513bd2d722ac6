# The two commands of the README: `make run` (install and run the product) and `make test`
# (install and run every test). CI runs `make test` through .ci/run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080

# Django 6 needs Python 3.12 or newer; Debian 12's python3 is 3.11, pyenv has newer ones.
PYTHON_312 := $(shell for c in python3.14 python3.13 python3.12 $$HOME/.pyenv/versions/3.1[2-9]*/bin/python; do \
	$$c -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$c; break; }; done)

.PHONY: run test lint format clean chromium servers

run: $(VENV)/.site .env
	$(PY) manage.py up --host $(HOST) --port $(PORT)

test: .env lint chromium servers
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest --cov --cov-report=term

# mypy's files and strictness are in pyproject.toml; its Django plugin reads the settings, so .env.
lint: $(VENV)/.dev .env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(VENV)/.dev
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

$(VENV)/bin/python:
	@test -n "$(PYTHON_312)" || { echo "Python 3.12 or newer is needed (Django 6): install one (e.g. pyenv install 3.12)"; exit 1; }
	$(PYTHON_312) -m venv $(VENV)

$(VENV)/.site: requirements.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@ $(VENV)/.site

# A random secret for this machine; edit .env (see .env.example) for everything else.
.env:
	@echo "DJANGO_SECRET_KEY=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))')" > $@
	@echo "wrote $@ with a new DJANGO_SECRET_KEY"

# The browser tests drive Debian's Chromium (Playwright's own browser download is not reachable).
chromium:
	@command -v chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium; }

# The several-workers tests start a real PostgreSQL and Redis (tests/servers.py), Debian's.
servers:
	@{ ls /usr/lib/postgresql/*/bin/postgres && command -v redis-server; } >/dev/null 2>&1 || \
		{ apt-get update -q && apt-get install -y -q postgresql redis-server; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage
