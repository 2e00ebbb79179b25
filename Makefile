# Every target installs into .venv first when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: site build validate test toyvlm bench-site clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

## make site: install if needed, validate, generate, build, serve on http://127.0.0.1:8000
site: $(STAMP)
	$(PY) -m tools serve

## make build: validate, generate pages and build the static site into site/ (no server)
build: $(STAMP)
	$(PY) -m tools build

validate: $(STAMP)
	$(PY) -m tools validate

## make test: validate the data, then run the whole test suite (notebooks included)
test: $(STAMP)
	$(PY) -m tools validate
	$(PY) -m pytest

## make toyvlm: retrain the committed ToyVLM checkpoint from scratch (CPU, about 30 min)
toyvlm: $(STAMP)
	$(PY) -m reference_impls.common.train_toyvlm

bench-site: $(STAMP)
	$(PY) -m tools bench-site --n 10000

clean:
	rm -rf site docs/generated .cache
