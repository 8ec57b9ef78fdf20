# The two commands a new user needs: `make demo` (the main job) and `make test`.
# Each creates the virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test venv bench clean

# VENV_READY=1: $(VENV) was made elsewhere and already imports this checkout's cemaps (e.g. through
# PYTHONPATH); nothing is installed into it (tests/test_fresh_clone_demo.py runs a clone this way).
ifeq ($(VENV_READY),1)
venv:
else
venv: $(VENV)/.installed
endif

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

demo: venv
	$(BIN)/cemaps demo --out demo-out

test: venv
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python benchmarks/capture_overhead.py
	$(BIN)/python benchmarks/store_size.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
