# make train   install into .venv (first time), then train the default model: ARGS="model=convnet ..."
# make test    install into .venv (first time), then run the tests
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: train test lint clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

train: $(VENV)/.installed
	$(PY) -m mnist_lab.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests scripts

clean-venv:
	rm -rf $(VENV)
