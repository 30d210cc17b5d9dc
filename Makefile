# Two commands do all the set-up and work on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
STAMP  := $(VENV)/.backendiff-installed

.PHONY: install demo test lint test-heavy bench browser clean ops corpus

# torch is installed first from its own pin: the CPU build (a bare `torch` requirement
# would pull a multi-GB CUDA build); pyproject then only needs torch>=2.6.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[cpu,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/backendiff backends
	$(BIN)/backendiff compare zoo:mini-pose --backends ort,openvino,tvm,trt,openvino:fp32,precision_hint=default --samples 2 \
	  --html reports/demo.html ; \
	  code=$$?; echo "backendiff exit code $$code (0 agree, 1 diverged, 3 a backend could not run)"

test: $(STAMP) browser lint
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

lint: $(STAMP)
	$(BIN)/ruff check backendiff backends models tests bench

# Debian's Chromium, for the test that opens the HTML report in a headless browser. Where it
# cannot be installed (not root, no apt) that one test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: Debian's chromium could not be installed; the HTML report's browser test will be skipped"

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow"

# The corpus (models/corpus/): real architectures x every CPU route into one scoreboard. A cell
# that cannot run (an exporter or runtime that rejects the model) is on the board with its reason.
corpus: $(STAMP)
	$(BIN)/backendiff sweep --file models/corpus/corpus-sweep.toml --out reports/corpus ; \
	  code=$$?; echo "backendiff exit code $$code (0 every cell ran, 3 some cell could not run: its reason is on the board)"; \
	  echo "scoreboard: reports/corpus/sweep.html (sweep.json; each cell's report in reports/corpus/cells/)"

# PyTorch's whole OpInfo database (fp32) through the CPU runtimes: the operator matrix
ops: $(STAMP)
	$(BIN)/backendiff ops --backends ort,openvino,tvm --out reports/ops

# Polygraphy (NVIDIA's peer tool) is installed for the comparison only, not a dependency
bench: $(STAMP)
	$(PIP) install -q polygraphy
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
