# The two commands of the README: `make quickstart` and `make test`. Both create the virtual
# environment on first use (Python 3.11 and pip are all a fresh machine needs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: quickstart test test-slow test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/impress study run studies/quickstart.yaml --resume

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)  # exit 5 is pytest's "no test was marked slow"
	$(BIN)/python -m pytest -q -m slow || [ $$? -eq 5 ]

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check impress tests
	$(BIN)/ruff format --check impress tests

clean:
	rm -rf $(VENV) runs .pytest_cache

bench: $(STAMP)  # every performance figure against its target (about 12 minutes); `--quick` runs in the tests
	$(BIN)/python -m bench
