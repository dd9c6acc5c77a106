# Two commands on a fresh machine: `make demo` (data -> train -> evaluate on the bundled sample data)
# and `make test`. Both create .venv from the requirements files when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
