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
# Training: WEIGHTS=none (the default) starts from the measured scratch recipe (genrecls.config.RECIPES:
# the small CNN at 128 px, augmentation, dropout, a shared OvA trunk); any variable set here overrides it,
# e.g. make train-ova DATA=../shared/datasets/ml1m WEIGHTS=imagenet BACKBONE=efficientnetv2b0 EPOCHS=20
WEIGHTS    ?= none
RECIPE     ?= $(if $(filter none,$(WEIGHTS)),scratch,)
BACKBONE   ?=
EPOCHS     ?=
IMAGE_SIZE ?=
BATCH_SIZE ?=
# TEXT=title fuses the title with the poster (any table column works: TEXT=title,plot)
TEXT       ?=
OUT        ?= models/$(MODE)-$(or $(BACKBONE),$(RECIPE),default)-$(notdir $(DATA))
EXTRA      ?=
# Options every training-like target shares; an empty variable leaves the recipe's (or config's) value.
COMMON = $(if $(RECIPE),--recipe $(RECIPE)) --weights $(WEIGHTS) --seed $(SEED) $(if $(BACKBONE),--backbone $(BACKBONE)) \
	$(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(BATCH_SIZE),--batch-size $(BATCH_SIZE)) \
	$(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(if $(TEXT),--text $(TEXT))
# Re-running a train target resumes an interrupted run; add EXTRA=--overwrite to start over.
TRAIN = $(BIN)/genrecls train $(DATA) --mode $(MODE) $(COMMON) --out $(OUT) $(EXTRA)

MODE       ?= multilabel
TRIALS     ?= 5
RUN        ?= models/demo-ova
IMAGES     ?= $(DEMO_DATA)/posters

.PHONY: install demo demo-data test test-fast clean help train-ova train-multilabel train-multiclass tune export predict \
	bench quality

help:
	@echo "make demo   - generate the demo posters (no download), train the one-vs-all ensemble, print per-genre F1"
	@echo "make train-ova | train-multilabel | train-multiclass  [DATA= BACKBONE= WEIGHTS= EPOCHS= IMAGE_SIZE= BATCH_SIZE= TEXT= OUT= EXTRA=]"
	@echo "make tune   [DATA= MODE= BACKBONE= TRIALS= EPOCHS=]  - Keras Tuner random search, resumable"
	@echo "make export RUN=models/RUN   - SavedModel serving image bytes in RUN/export"
	@echo "make predict RUN=models/RUN IMAGES='a.jpg folder/'   - genres of new posters"
	@echo "make bench  [SCALE=1]  - speed and memory benchmarks, written to benchmarks/results.json"
	@echo "make quality [MODES=multilabel,ova] [INPUTS=poster,text,both]  - train the scratch recipe on "
	@echo "               ../shared/datasets/ml1m per mode with the poster, the title and both; scores beside"
	@echo "               their baselines in benchmarks/quality.md (about an hour on 2 cores)"
	@echo "make test   - run the whole test suite in 2 pytest-xdist workers (about 10 min on 2 cores; TEST_JOBS=N)"
	@echo "make test-fast - the quick loop: every test not marked slow"
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
	$(MAKE) --no-print-directory train-ova DATA=$(DEMO_DATA) OUT=models/demo-ova IMAGE_SIZE=48 BATCH_SIZE=16 \
		EPOCHS=15 EXTRA="--quiet --cache memory --overwrite"

# Each train target generates the demo set first when DATA is the demo set.
train-ova train-multilabel train-multiclass: MODE = $(patsubst train-%,%,$@)
train-ova train-multilabel train-multiclass: install
	@if [ "$(DATA)" = "$(DEMO_DATA)" ] && [ ! -f $(DEMO_DATA)/labels.csv ]; then $(MAKE) --no-print-directory demo-data; fi
	$(TRAIN)

# Resumable: run it again to continue the search; add EXTRA=--overwrite to start over.
tune: install
	@if [ "$(DATA)" = "$(DEMO_DATA)" ] && [ ! -f $(DEMO_DATA)/labels.csv ]; then $(MAKE) --no-print-directory demo-data; fi
	$(BIN)/genrecls tune $(DATA) --mode $(MODE) $(COMMON) $(if $(EPOCHS),,--epochs 5) --max-trials $(TRIALS) \
		--out models/tune-$(MODE)-$(or $(BACKBONE),$(RECIPE),default)-$(notdir $(DATA)) --quiet $(EXTRA)

SCALE      ?= 1
bench: install
	$(BIN)/genrecls bench --scale $(SCALE)

MODES      ?=
INPUTS     ?= poster,text,both
quality: install
	$(BIN)/genrecls quality --inputs $(INPUTS) $(if $(MODES),--modes $(MODES)) $(if $(EPOCHS),--epochs $(EPOCHS))

export: install
	$(BIN)/genrecls export $(RUN)

predict: install
	$(BIN)/genrecls predict $(RUN) $(IMAGES)

# Tests run in TEST_JOBS pytest-xdist workers (2 fits the 2-core CI machine; TEST_JOBS=0 runs them in one process).
TEST_JOBS  ?= 2
test: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS)

test-fast: install
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info $(DEMO_DATA) models/demo-ova
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
