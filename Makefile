# keras-advcal: the two README commands and a few more.
#   make demo   trains PGD-AT and the calibrated trainer on digits, prints a table
#   make test   installs the package with its dev tools and runs the test suite
#   make bench  runs the robust-overfitting benchmark (hours on 2 CPU cores)
#   make docs   builds the MkDocs site into site/

# Use the active virtual environment if there is one, else create .venv.
ifdef VIRTUAL_ENV
PYTHON := python
STAMP := $(VIRTUAL_ENV)/.keras-advcal-installed
else
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.keras-advcal-installed
endif

PYTEST_ARGS ?= -q -p no:cacheprovider --durations=30

.PHONY: install demo test bench docs clean

$(PYTHON):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PYTHON)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) -m keras_advcal demo

test: install
	TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) -m pytest $(PYTEST_ARGS)

bench: install
	TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) benchmarks/robust_overfitting.py

docs: install
	$(PYTHON) -m mkdocs build --strict

clean:
	rm -rf site build *.egg-info .pytest_cache
