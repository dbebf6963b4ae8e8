# featkit: `make demo` runs the main job on the embedded digits; `make test` runs the test suite.
# Both create .venv and install featkit into it first (Python 3.11 and pip are all they need).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featkit-installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	@echo "Installing featkit and its dependencies into $(VENV) (PyTorch is large: a few minutes the first time)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/featkit demo -o demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -n auto -q

lint: $(STAMP)
	$(BIN)/ruff check featkit tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/extract_throughput.py

clean:
	rm -rf demo_out .pytest_cache
