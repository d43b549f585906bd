# The README's commands are the contract: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU build on disk: anything that depends on torch would otherwise pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# Exactly one ONNX Runtime flavour: [cpu] here; GPU machines use `make setup EXTRAS=gpu,openvino,triton,serving,dev`.
EXTRAS ?= cpu,openvino,triton,serving,dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint lab clean doctor browser-deps

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

# Two workers: the machines that run CI have two cores, and the slow tests (notebooks, servers) wait on subprocesses.
PYTEST_WORKERS ?= 2

test: setup browser-deps lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --durations=25 $(PYTEST_ARGS)

# The habits that keep the architecture: style, the import layers (no cycles, imports inside functions count), types.
lint: setup
	$(BIN)/ruff check workbench tests bench
	$(BIN)/ruff format --check workbench tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

# What tests/browser needs: Debian's chromium (never `playwright install`: it cannot download a browser here) and the
# playwright + voila packages (in the dev extra). Never fails: without them the browser test skips and says why.
browser-deps: setup
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "browser-deps: apt-get could not install chromium; the browser test will skip"; \
	else echo "browser-deps: /usr/bin/chromium is missing and apt-get is unavailable (or not root); the browser test will skip"; fi
	@$(BIN)/python -c "import playwright, voila" 2>/dev/null || $(BIN)/python -m pip install --quiet playwright voila \
		|| echo "browser-deps: pip could not install playwright and voila; the browser test will skip"

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lab: setup
	$(BIN)/jupyter lab notebooks/

doctor: setup
	$(BIN)/python -m workbench doctor

clean:
	rm -rf runs/ .pytest_cache
