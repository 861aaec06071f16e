# make train   install into .venv (first time: training, export and predict, no MLflow), then train the default
#              model: ARGS="model=convnet ..."
# make test    install into .venv (first time: everything, the [mlflow] extra, pytest and ruff too), then run the tests
# make gpu-check DATA=<folder holding MNIST/raw/>   on a machine with one GPU: GPU tests and GPU bench rows
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=
DATA   ?= $(or $(MNIST_LAB_DATA_DIR),data)

.PHONY: train test gpu-check lint clean-venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

# what `make train` needs: the package with its export extra (export=true, mnist_lab.export, predict); a .venv
# that `make test` installed holds it already
$(VENV)/.installed-train: pyproject.toml
	if [ ! $(VENV)/.installed -nt pyproject.toml ]; then \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[export]'; \
	fi
	touch $@

train: $(VENV)/.installed-train
	$(PY) -m mnist_lab.train $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest $(ARGS)

gpu-check: $(VENV)/.installed
	$(PY) scripts/gpu_check.py --data $(DATA)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests scripts

clean-venv:
	rm -rf $(VENV)
