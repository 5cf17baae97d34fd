# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench ui clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir --upgrade pip

# No pip cache: the torch build alone is several GB, and a second copy of it in the cache can
# fill a small disk.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --no-cache-dir -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/aras demo

# Two workers, one test file each at a time (a file's module fixtures are built once).
test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/patches.py
	$(BIN)/python bench/segmentation.py
	$(BIN)/python bench/captions.py
	$(BIN)/python bench/generation.py
	$(BIN)/python bench/lineage.py
	$(BIN)/python bench/evaluation.py

ui: $(STAMP)
	$(BIN)/aras ui

clean:
	rm -rf data .dagster_home
