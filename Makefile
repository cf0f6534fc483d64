# Two commands set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CERTS := .dev-certs

.PHONY: run test test-fast settings-docs bench lint typecheck install install-dev bench-deps clean lock audit \
	datastar-client

# Installs come from uv.lock (every package pinned with its hashes, for every platform), applied by uv: `uv sync
# --locked` refuses to run when the lock no longer matches pyproject.toml, so what CI tests is what a user gets.
# uv itself lives in its own small venv ($(TOOLS)), pinned here, so `uv sync` (which removes what the lock does not
# name) never removes the tool that runs it.
UV_VERSION := 0.13.9
TOOLS ?= .tools
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON := $(shell command -v $(PYTHON))
export UV_PYTHON_DOWNLOADS := never

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q uv==$(UV_VERSION)

# `make run` adds the runtime packages to what is there (--inexact keeps dev tools a `make test` installed).
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --inexact --quiet
	touch $@

$(VENV)/.installed-dev: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --extra bench --extra otel --quiet
	touch $(VENV)/.installed $@

## lock: re-resolve every dependency to the newest versions pyproject.toml allows (then run `make test`)
lock: | $(UV)
	$(UV) lock --upgrade

## settings-docs: regenerate config/gateway.toml and the README's settings table from gateway/config.py
settings-docs: $(VENV)/.installed
	$(BIN)/gateway config > config/gateway.toml
	$(BIN)/python -c "import re, pathlib, gateway.config as c; p = pathlib.Path('README.md'); t = p.read_text(); \
	start = t.index('| setting | environment |'); end = t.index('\n\n', start); \
	p.write_text(t[:start] + c.defaults_markdown().rstrip('\n') + t[end:])"

# The Datastar demo's browser client (gateway.demo.datastar) is third-party code fetched from PyPI at install time,
# pinned by the wheel's and the file's sha256, into a git-ignored file. Always run: when the client is in place the
# script only hashes it (~50 ms); a hash that differs fails the step. Plain stdlib Python with pip: the tools venv.
datastar-client: | $(UV)
	$(TOOLS)/bin/python gateway/demo/fetch_datastar.py

install: $(VENV)/.installed datastar-client
install-dev: $(VENV)/.installed-dev datastar-client

$(CERTS)/cert.pem: | $(VENV)/.installed
	$(BIN)/gateway devcert --dir $(CERTS)

## run: install into .venv and start the demo on https://127.0.0.1:8443 (h2 + HTTP/3) and http://127.0.0.1:8000
# The hint names the default binds; with ARGS (which may change them) it points at the gateway's own log lines.
RUN_HINT := open https://127.0.0.1:8443/ (accept the self-signed certificate once); plain HTTP on http://127.0.0.1:8000
run: $(VENV)/.installed $(CERTS)/cert.pem datastar-client
	@echo "$(if $(ARGS),open the https URL of the \"listening on\" lines below (accept the self-signed certificate once),$(RUN_HINT))"
	$(BIN)/gateway serve --certfile $(CERTS)/cert.pem --keyfile $(CERTS)/key.pem $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gateway tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy gateway tests benchmarks

## test: install and run every test (lint and strict typing included)
test: lint typecheck datastar-client
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## test-fast: install and run the unit tier only (in-process, no servers or browsers; under 15 s)
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m unit -q $(PYTEST_ARGS)

## audit: check every locked package against the vulnerability database (pip-audit); a finding fails, an unreachable
## database skips with one line saying so (tests/support/audit.py)
audit: $(VENV)/.installed-dev
	$(BIN)/python -m tests.support.audit

## bench: install what the comparison needs (nginx + nchan as root), run it (~40 min), write docs/benchmarks.md,
## docs/scaleout.md and docs/idle-memory.md (the idle stream's memory by owner)
bench: $(VENV)/.installed-dev bench-deps
	$(BIN)/python -m benchmarks comparison $(BENCH_ARGS)
	$(BIN)/python -m benchmarks scaleout $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.idle_breakdown

bench-deps:
	@if ! dpkg-query -W -f='$${Status}' libnginx-mod-nchan 2>/dev/null | grep -q "install ok installed"; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nginx libnginx-mod-nchan; \
		else echo "nchan is not installed (apt-get install nginx libnginx-mod-nchan): its rows will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) $(TOOLS) $(CERTS) .pytest_cache .mypy_cache .ruff_cache *.egg-info
