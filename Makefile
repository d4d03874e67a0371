# Entry points for developers and CI. The README's two set-up commands: `make test`, `make demo`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: system-deps venv test lint stack-up stack-down demo

# System packages (redis-server, kcat, ffmpeg, Java, Maven, promtool, g++): installed when missing
# (as root or through sudo -n), else one message with the command to run. Every target below
# depends on it through the venv, so it runs first; it takes about a second when all is there.
system-deps:
	@PYTHON='$(PYTHON)' scripts/system-deps.sh

venv: $(STAMP)

# Re-installs whenever pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | system-deps
	@test -x $(VENV_PYTHON) || { \
	  $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	    || { echo "need Python >= 3.11, found '$(PYTHON)'" >&2; exit 1; }; \
	  $(PYTHON) -m venv $(VENV); }
	$(VENV_PYTHON) -m pip install -e '.[worker,train,dev]'
	touch $(STAMP)

# Unit + integration tests; fixtures start Kafka and Redis when needed.
test: venv
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

stack-up: venv
	$(VENV_PYTHON) -m deploy.local up

stack-down: venv
	$(VENV_PYTHON) -m deploy.local down

demo: venv
	$(VENV_PYTHON) -m deploy.demo
