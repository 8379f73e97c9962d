# Two commands set everything up on a fresh machine:
#   make demo   -> creates .venv if missing, installs everything, runs the main job
#   make test   -> same set-up, then the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= work_dirs/demo
DEMO_DGOD_DIR ?= work_dirs/demo_dgod

.PHONY: setup demo demo-dgod test bench clean

setup:
	bash tools/setup_env.sh

demo: setup
	$(PY) tools/demo.py --work-dir $(DEMO_DIR)

demo-dgod: setup
	$(PY) tools/demo_dgod.py --work-dir $(DEMO_DGOD_DIR)

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf work_dirs .pytest_cache
