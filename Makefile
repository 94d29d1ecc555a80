# keras-advcal: the two README commands and a few more.
#   make demo   installs the package alone, trains PGD-AT, the default (TRADES) and calibrated PGD-AT on
#               digits, prints a table
#   make test   installs the package with its dev tools and runs the test suite
#   make bench  runs the robust-overfitting benchmark (hours on 2 CPU cores)
#   make docs   builds the MkDocs site into site/
#
# Inside an active virtual environment ($VIRTUAL_ENV set) every target installs into
# it; otherwise the first target creates .venv and installs there.
#
# TF_CPP_MIN_LOG_LEVEL=3 hides TensorFlow's C++ warnings during the tests and the
# benchmark, not its start-up lines (TensorFlow writes those before it reads the
# variable). `make demo` runs the advcal command, which hides the start-up lines
# itself; run it with TF_CPP_MIN_LOG_LEVEL=0 to see everything.

ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
NEW_VENV :=
else
VENV := .venv
NEW_VENV := $(VENV)/bin/python
endif
PYTHON := $(VENV)/bin/python
# One stamp per set of extras: `make demo` installs the package alone, `make test`
# and `make docs` add the [dev] extras.
STAMP := $(VENV)/.keras-advcal-installed
DEV_STAMP := $(VENV)/.keras-advcal-dev-installed

PYTEST_ARGS ?= -q -p no:cacheprovider --durations=30

.PHONY: install install-dev demo test bench docs clean

ifneq ($(NEW_VENV),)
$(NEW_VENV):
	python3 -m venv $(VENV)
endif

$(STAMP): pyproject.toml | $(NEW_VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e .
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml | $(NEW_VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e ".[dev]"
	touch $(DEV_STAMP) $(STAMP)

install: $(STAMP)

install-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(PYTHON) -m keras_advcal demo

test: $(DEV_STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PYTHON) benchmarks/robust_overfitting.py

docs: $(DEV_STAMP)
	$(PYTHON) -m mkdocs build --strict

clean:
	rm -rf site build *.egg-info .pytest_cache
