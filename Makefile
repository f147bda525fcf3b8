PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test dev lint bench docs clean

# The venv is built from the pinned name==version list; it is rebuilt when that list changes.
$(STAMP): requirements.lock.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lexer-assets demo

test: $(STAMP)
	$(BIN)/ruff check lexer_assets lexer_assets_tests benchmarks
	$(BIN)/pytest -q

dev: $(STAMP)
	$(BIN)/lexer-assets dev

lint: $(STAMP)
	$(BIN)/ruff check lexer_assets lexer_assets_tests benchmarks

# Regenerate docs/data-dictionary.md from the table catalog (a test fails when it is stale).
docs: $(STAMP)
	$(BIN)/python -m lexer_assets.profiles.data_dictionary

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
