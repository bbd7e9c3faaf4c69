# Quick start: `make demo` and `make test`.  Both do all the set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install

.PHONY: setup test demo postgres clean

setup: $(STAMP) postgres

$(STAMP): setup.cfg setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@touch $@

postgres:
	@bash .ci/ensure-postgres

test: setup
	$(PY) -m pytest -q

demo: setup
	$(VENV)/bin/powerctl demo

clean:
	rm -rf $(VENV) build *.egg-info .hypothesis
