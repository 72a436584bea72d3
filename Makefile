# The two commands of the README. Both create and fill .venv when needed, so nothing relies
# on what happens to be installed on the machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch/torchvision ranges admit the 2.14.1/0.29.1 wheels that pip finds locally.
	$(PY) -m pip install -q -e '.[test,s3]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m jobs.demo

# --durations: the slowest tests in every CI log, for the suite-time budget.
test: $(STAMP)
	$(PY) -m pytest -q --durations=30 tests

bench: $(STAMP)
	$(PY) benchmarks/generate_throughput.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/serve_load.py

clean:
	rm -rf $(VENV) ganaug-store .pytest_cache
