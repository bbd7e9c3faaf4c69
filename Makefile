# Quick start: `make demo` and `make test`.  Both do all the set-up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install
SUSHY := $(CURDIR)/.venv-peers/bin/sushy-emulator

.PHONY: setup test demo postgres peers clean

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

demo: setup
	$(VENV)/bin/powerctl demo

clean:
	rm -rf $(VENV) .venv-peers build *.egg-info .hypothesis state
