# Two commands on a fresh machine: `make demo` (data -> train -> evaluate on the bundled sample data)
# and `make test`. Both create .venv from the requirements files when it is missing or out of date.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow bench clean-venv

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-ray.txt requirements-alpaca.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# The main job on the bundled sample data: prepare GOOGL daily splits, train both model types briefly,
# evaluate them against the baselines on the test split with plots and an HTML report under results/.
DEMO_STEPS ?= 5000
demo: $(VENV)/.installed
	$(PY) data_pipeline.py --symbols GOOGL --source sample
	$(PY) train_bot.py --model-type both --symbol GOOGL --steps $(DEMO_STEPS)
	$(PY) evaluate_bot.py --symbol GOOGL --create-plots

# The architecture and style checks run first: an import that points up (.importlinter) or a ruff finding
# fails the build like a failing test. The tests marked slow (minutes each: the README walk-through, Ctrl-C
# stress, kill -9 loops, the 30-day daemon, walk-forward cuts) run with `make test-slow`, and in CI.
test: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow tests

bench: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps -r bench/requirements.txt
	$(PY) bench/run_all.py

clean-venv:
	rm -rf $(VENV)
