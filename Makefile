# Two commands on a fresh machine: `make compile` and `make test` (each sets up .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false

.PHONY: setup compile compile-tensorrt test test-slow test-all bench bench-cpu bench-readme notebooks clean test-reliability bench-reliability

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

compile: setup  ## the default compile of the reference detector, on this machine
	$(VENV)/bin/yolo-compile run default

compile-tensorrt: setup  ## stages 1-4 for a TensorRT target (5-6 run where TensorRT and a GPU are)
	$(VENV)/bin/yolo-compile run default --set target=tensorrt

test: setup  ## the default suite (CPU, no network; slow and GPU checks deselected)
	$(VENV)/bin/pytest -q

test-slow: setup  ## the slow-marked checks (reference compiles, resume after SIGKILL, wheel, Ray cluster); CI runs them too
	$(VENV)/bin/pytest -q -m 'slow and not gpu'

test-all: setup  ## everything, GPU tests skip with their reason where no GPU/TensorRT
	$(VENV)/bin/pytest -q -m ''

bench: setup
	$(PY) bench/run.py

bench-cpu: setup  ## ours vs Ultralytics' OpenVINO INT8 export on this CPU; rewrites its table in bench/README.md
	$(PY) bench/cpu_target.py --write

bench-readme: setup  ## every CPU benchmark of bench/README.md, rewritten in place (compile time, the peer, calibration memory)
	$(PY) bench/compile_time.py --write
	$(PY) bench/cpu_target.py --write
	$(PY) bench/calibration_memory.py --write

notebooks: setup  ## regenerate notebooks/ from the stage configs
	$(PY) scripts/make_notebooks.py

clean:
	rm -rf artifacts/runs

test-reliability: setup  ## bad inputs, bad images, honest completion, resume after SIGKILL, stage cache (slow ones included)
	$(VENV)/bin/pytest -q -m '' tests/reliability

bench-reliability: setup  ## warm/cold compile time, notebook overhead, 4 concurrent + 20 sequential compiles
	$(PY) bench/compile_time.py
	$(PY) bench/load.py
