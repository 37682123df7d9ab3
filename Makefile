# The two front-door commands. Both create/refresh the virtualenv from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: test demo install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/deltalora demo

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
