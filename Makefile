# Two commands on a fresh machine: `make compile` and `make test` (each sets up .venv first).
VENV ?= .venv
PY := $(VENV)/bin/python
export YOLO_OFFLINE := 1
export YOLO_AUTOINSTALL := false

.PHONY: setup setup-compile lock compile compile-tensorrt test test-slow test-all bench bench-cpu bench-readme notebooks clean test-reliability bench-reliability

LOCK := constraints.txt
# pip, not uv: pip takes torch/torchvision from these machines' local wheel cache (uv would download ~3 GB).
PIP_INSTALL := $(PY) -m pip install -q -c $(LOCK)

setup: $(VENV)/.installed  ## everything the tests need (Ray, JupyterLab, Playwright...), at the lock's versions

setup-compile: $(VENV)/.installed-compile  ## only what a compile needs: the pipeline, OpenVINO and NNCF

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PIP_INSTALL) -e '.[dev]'
	$(PY) -m compileall -q src  # the first compile's kernels would otherwise byte-compile the package each
	touch $@ $(VENV)/.installed-compile

$(VENV)/.installed-compile: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PIP_INSTALL) -e .
	$(PY) -m compileall -q src
	touch $@

lock:  ## refresh constraints.txt: resolve pyproject.toml (all extras) in a fresh venv, freeze it; then run make test
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q -e '.[dev]'
	{ sed -n '/^#/p' $(LOCK); .lock-venv/bin/python -m pip freeze --exclude-editable | LC_ALL=C sort -f; } > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .lock-venv
	@echo "constraints.txt refreshed: check git diff constraints.txt, then make test (the reference frames need the same opencv)"

compile: setup-compile  ## the default compile of the reference detector, on this machine
	$(VENV)/bin/yolo-compile run default

compile-tensorrt: setup-compile  ## stages 1-4 for a TensorRT target (5-6 run where TensorRT and a GPU are)
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
