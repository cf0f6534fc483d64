# Two commands set up a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CERTS := .dev-certs

.PHONY: run test bench lint typecheck install install-dev bench-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(CERTS)/cert.pem: | $(VENV)/.installed
	$(BIN)/gateway devcert --dir $(CERTS)

## run: install into .venv and start the demo on http://127.0.0.1:8000 and https://127.0.0.1:8443 (h2 + HTTP/3)
run: $(VENV)/.installed $(CERTS)/cert.pem
	$(BIN)/gateway serve --certfile $(CERTS)/cert.pem --keyfile $(CERTS)/key.pem $(ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check gateway tests benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy gateway benchmarks

## test: install and run every test (lint and strict typing included)
test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## bench: install what the comparison needs (nginx + nchan as root), run it (~15 min), write docs/benchmarks.md
bench: $(VENV)/.installed-dev bench-deps
	$(BIN)/python -m benchmarks comparison $(BENCH_ARGS)
	$(BIN)/python -m benchmarks scaleout $(BENCH_ARGS)

bench-deps:
	@if ! dpkg-query -W -f='$${Status}' libnginx-mod-nchan 2>/dev/null | grep -q "install ok installed"; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends nginx libnginx-mod-nchan; \
		else echo "nchan is not installed (apt-get install nginx libnginx-mod-nchan): its rows will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) $(CERTS) .pytest_cache .mypy_cache .ruff_cache *.egg-info
