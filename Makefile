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

.PHONY: run test suite coverage lint format clean chromium fonts nginx servers gettext messages vendor bench bench-vllm

run: $(VENV)/.site .env
	$(PY) manage.py up --host $(HOST) --port $(PORT)

# pytest-xdist: TEST_WORKERS processes share the tests out, each with its own site, fake vLLM, test
# database and PostgreSQL/Redis; one of them runs the real-vLLM tests, which share one booted vLLM
# (tests/conftest.py). More workers than cores: much of a test is waiting on a server or a browser.
# On this 2-core machine, 1,224 tests: 4 workers took 24 min 52 s of pytest while other work loaded
# the machine (load average up to 20); 3 workers had taken 26 min 36 s on a quiet machine.
TEST_WORKERS ?= 4
# The tests start about 250 Python processes (sites, `manage.py` commands, vLLM's stand-ins) and four
# pytest workers. Where the environment says not to write bytecode (PYTHONDONTWRITEBYTECODE, as on
# this CI machine), each start compiled the site's modules again (0.6 CPU-s of `manage.py check`'s 2.5)
# and each worker rewrote every test module (collection 16 CPU-s instead of 8). The tests write it.
test: export PYTHONDONTWRITEBYTECODE :=
test: .env $(VENV)/.dev chromium fonts nginx servers gettext
	$(PY) manage.py makemigrations --check --dry-run
	@# The linters check while the tests run: mypy takes about 50 CPU-s on a clean clone, on one
	@# core, which left the other idle before the tests started. Either failing fails the run.
	$(MAKE) --no-print-directory -j 2 lint suite

suite: .env $(VENV)/.dev
	$(PY) -m pytest -n $(TEST_WORKERS)

# The same suite measured by coverage.py (pyproject.toml: the sites and commands the tests start
# too), with a report of the lines no test runs. Not part of `make test`: measuring made every Python
# process of the suite take about a quarter more CPU (tests/chat/test_live_site.py and test_cli.py:
# 67-70 CPU-s against 52-56), on a machine whose two cores are the suite's bound.
coverage: .env $(VENV)/.dev chromium fonts nginx servers gettext
	$(PY) -m pytest -n $(TEST_WORKERS) --cov --cov-report=term

# mypy's files and strictness are in pyproject.toml; its Django plugin reads the settings, so .env.
lint: $(VENV)/.dev .env
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# What the site adds to an answer's stream, door by door, beside a fake vLLM (bench/README.md).
# Not part of `make test`: it takes minutes and its figures depend on the machine. BENCH_ARGS=--quick
bench: $(VENV)/.bench .env
	$(PY) -m bench.run $(BENCH_ARGS)

# vLLM's own benchmark (`vllm bench serve`) straight to the bench's fake and through the site's /v1;
# BENCH_ARGS="--engine starter" for the real starter model on vLLM's CPU build (bench/README.md).
bench-vllm: .env | $(VENV)/.site
	$(PY) -m bench.vllm_bench $(BENCH_ARGS)

$(VENV)/.bench: bench/requirements.txt | $(VENV)/.site
	$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

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

# The browser tests drive Debian's Chromium headless shell (tests/chromium.py); Playwright's own
# browser download is not reachable.
chromium:
	@command -v chromium-headless-shell >/dev/null || { apt-get update -q && apt-get install -y -q chromium-headless-shell; }

# The file tests make a Korean PDF with fpdf2, which needs a TrueType font with Hangul (Debian's
# fonts-nanum); Chromium draws the page's Korean with it too.
fonts:
	@test -f /usr/share/fonts/truetype/nanum/NanumGothic.ttf || { apt-get update -q && apt-get install -y -q fonts-nanum; }

# The site's texts in Korean (locale/ko/LC_MESSAGES). After adding or changing a text: `make messages`,
# translate what it added or marked fuzzy in the .po files, and `make messages` again, which compiles
# them; commit the .po and .mo files both (the site runs from the .mo, with no gettext installed).
# tests/test_messages.py runs this target on a copy of the tree and fails on any text left untranslated.
MESSAGES_IGNORED := -i node_modules -i tests -i bench -i docs -i deploy -i 'chat/static/chat/vendor/*'
messages: gettext
	$(PY) manage.py makemessages --locale ko --no-obsolete $(MESSAGES_IGNORED)
	$(PY) manage.py makemessages --domain djangojs --locale ko --no-obsolete $(MESSAGES_IGNORED)
	$(PY) manage.py compilemessages --locale ko -i .venv -i node_modules

# makemessages and compilemessages need GNU gettext's tools (xgettext, msgmerge, msgfmt).
gettext:
	@command -v msgfmt >/dev/null && command -v xgettext >/dev/null || { apt-get update -q && apt-get install -y -q gettext; }

# The deployment tests run Debian's nginx in front of the site (deploy/nginx/), over TLS with a
# certificate that openssl makes for them.
nginx:
	@{ command -v nginx || test -x /usr/sbin/nginx; } >/dev/null && command -v openssl >/dev/null || \
		{ apt-get update -q && apt-get install -y -q nginx openssl; }

# The chat page's browser libraries, pinned in package.json and package-lock.json, are kept in the
# repository as static files (the site serves them itself: no CDN, no build step to run it). This
# target brings them back from the npm registry, with their licenses, after a version change.
VENDOR := chat/static/chat/vendor
NPM := node_modules
vendor: package.json package-lock.json
	npm ci --ignore-scripts --no-audit --no-fund
	rm -rf $(VENDOR)
	mkdir -p $(VENDOR)/markdown-it $(VENDOR)/markdown-it-task-lists $(VENDOR)/highlight.js $(VENDOR)/dompurify $(VENDOR)/katex/fonts
	cp $(NPM)/markdown-it/dist/browser/markdown-it.umd.min.js $(NPM)/markdown-it/LICENSE $(VENDOR)/markdown-it/
	cp $(NPM)/markdown-it-task-lists/dist/markdown-it-task-lists.min.js $(NPM)/markdown-it-task-lists/LICENSE $(VENDOR)/markdown-it-task-lists/
	cp $(NPM)/@highlightjs/cdn-assets/highlight.min.js $(NPM)/@highlightjs/cdn-assets/styles/github.min.css \
		$(NPM)/@highlightjs/cdn-assets/LICENSE $(VENDOR)/highlight.js/
	cp $(NPM)/dompurify/dist/purify.min.js $(NPM)/dompurify/LICENSE $(VENDOR)/dompurify/
	cp $(NPM)/katex/dist/katex.min.js $(NPM)/katex/dist/katex.min.css $(NPM)/katex/LICENSE $(VENDOR)/katex/
	@# Browsers that run the page read WOFF2, the first format katex.min.css offers; the others are never asked for.
	cp $(NPM)/katex/dist/fonts/*.woff2 $(VENDOR)/katex/fonts/

# Search, export and import are tested on PostgreSQL too, and the several-workers tests run the site
# on PostgreSQL and Redis (tests/servers.py): real servers the tests start from Debian's packages.
servers:
	@{ ls /usr/lib/postgresql/*/bin/postgres && command -v redis-server; } >/dev/null 2>&1 || \
		{ apt-get update -q && apt-get install -y -q postgresql redis-server; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage $(NPM)
