# One way to run things: the README's commands, CI and developers all use these.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test bench bench-quick server venv clean

# Set up, start a server on the mock backend and drive its pins with examples.
demo: $(VENV)/.installed
	$(BIN)/python examples/demo.py

# The test suite (real server subprocesses on 127.0.0.1).
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m bench

bench-quick: $(VENV)/.installed
	$(BIN)/python -m bench --quick

# A server on the mock backend on port 8509 of this machine, until Ctrl+C.
server: $(VENV)/.installed
	$(BIN)/remoteio-server --host 127.0.0.1 --backend mock

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
