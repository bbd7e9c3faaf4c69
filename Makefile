# Quick start: `make demo` and `make test`.  Both do all the set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
SUSHY := $(CURDIR)/.venv-peers/bin/sushy-emulator

.PHONY: setup test demo postgres peers clean mutate bench bench-scale

setup: $(STAMP) postgres

# Editable install for development; the tests import the checkout.  It
# must stay editable_mode=compat (a plain .pth putting the checkout on
# sys.path): twistd finds twisted/plugins/powerctl_plugins.py through that
# sys.path entry.  The other modes serve the `twisted.plugins` package that
# setup.py lists through an import hook which twistd's plugin scan does not
# see (tried: with `lenient`, twistd lists neither daemon).  A wheel puts
# the plugin in site-packages/twisted/plugins instead (tests/test_wheel.py
# checks a real, non-editable install).
$(STAMP): setup.cfg setup.py MANIFEST.in
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@touch $@

postgres:
	@bash .ci/ensure-postgres

# The standard protocol peers (snmpd, ipmi_sim, sushy-tools), best effort.
peers:
	@bash .ci/ensure-peers

test: setup peers
	POWERCTL_SUSHY=$$(test -x $(SUSHY) && echo $(SUSHY)) $(PY) -m pytest -q

# Mutation testing of the decision and glue modules (issue 15); not part of
# `make test`.  Tool: cosmic-ray, because it runs each mutant's tests in a
# fresh interpreter with an explicit per-module test command -- the suite is
# trial TestCases under pytest-twisted's asyncio reactor, some starting a
# private PostgreSQL, which mutmut 3's fork-a-live-pytest-per-mutant model
# does not suit.  cosmic-ray mutates files in place, so bench/mutate.py
# runs it only on a copy of the tree under /tmp, never on the checkout.
# About 30 minutes on 2 cores; MUTATE_ARGS='--only slots,base --budget 300'.
mutate: setup
	$(PY) -m pip install -q 'cosmic-ray >= 8.7, < 9'
	$(PY) bench/mutate.py $(MUTATE_ARGS)

# Every row of issue 14's table beside a baseline measured in the same run
# (the REST API against a trivial twisted.web resource, the pserv's sweeps,
# memory, replay and bulk power-on against the bare drivers), printed as one
# table by bench/table.py; prints, asserts nothing.  The scale model's write
# counts (not a row of the table) are `make bench-scale`.
bench: setup
	$(PY) bench/table.py $(BENCH_ARGS)

bench-scale: setup
	$(PY) bench/scale_model.py

demo: setup
	$(VENV)/bin/powerctl demo

clean:
	rm -rf $(VENV) .venv-peers build *.egg-info .hypothesis state
