# The README's commands are the contract: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on disk: anything that depends on torch would otherwise pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Exactly one ONNX Runtime flavour: [cpu] here; GPU machines use `make setup EXTRAS=gpu,triton,dev`.
EXTRAS ?= cpu,triton,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lab clean doctor

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	@if [[ ",$(EXTRAS)," == *",gpu,"* ]] && $(BIN)/python -m pip show onnxruntime >/dev/null 2>&1; then \
		echo "Removing onnxruntime before installing onnxruntime-gpu (they cannot coexist)"; \
		$(BIN)/python -m pip uninstall --yes onnxruntime onnxruntime-gpu; fi
	@if [[ ",$(EXTRAS)," == *",cpu,"* ]] && $(BIN)/python -m pip show onnxruntime-gpu >/dev/null 2>&1; then \
		echo "Removing onnxruntime-gpu before installing onnxruntime (they cannot coexist)"; \
		$(BIN)/python -m pip uninstall --yes onnxruntime onnxruntime-gpu; fi
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m workbench doctor
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	mkdir -p runs/quickstart
	cd notebooks && ../$(BIN)/papermill quickstart.ipynb ../runs/quickstart/quickstart.ipynb \
		-p output_dir ../runs/quickstart --log-level WARNING
	$(BIN)/python -m workbench summary runs/quickstart/summary.json

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lab: setup
	$(BIN)/jupyter lab notebooks/

doctor: setup
	$(BIN)/python -m workbench doctor

clean:
	rm -rf runs/ .pytest_cache
