# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.dpfast-installed

.PHONY: demo test bench install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, so the editable build (no build isolation) compiles against it.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard csrc/*)
	$(PIP) install --upgrade pip
	$(PIP) install "torch>=2.4" numpy setuptools wheel ninja
	$(PIP) install --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m dpfast demo

test: $(STAMP)
	$(PY) -m pytest tests -q

bench: $(STAMP)
	$(PY) -m pytest bench -q -s -o python_files='bench_*.py' --benchmark-columns=min,mean,stddev,rounds

clean:
	rm -rf build demo_out .pytest_cache
