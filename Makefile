# genrecls: every target that runs code depends on `install`, so a fresh clone
# needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

DEMO_DATA  := datasets/demo
DATA       ?= $(DEMO_DATA)
PER_GENRE  ?= 60
SEED       ?= 0

.PHONY: install demo demo-data test clean help

help:
	@echo "make demo   - generate the demo posters (no download) and summarise them"
	@echo "make test   - run the test suite"
	@echo "make install - create .venv and install genrecls with its dev extra"
	@echo "make clean  - remove .venv, caches, generated demo data and runs"

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo-data: install
	$(BIN)/genrecls demo-data $(DEMO_DATA) --per-genre $(PER_GENRE) --seed $(SEED)

demo: demo-data
	$(BIN)/genrecls summary $(DEMO_DATA)

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info $(DEMO_DATA)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
