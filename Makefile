# Two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SANDBOX := scripts/sandbox

.PHONY: setup test demo clean

setup: $(STAMP)

# Re-installs only when the pins or the package metadata change.
$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: setup
	$(SANDBOX) $(PY) -m pytest tests

clean:
	rm -rf $(VENV) build install log demo_out
