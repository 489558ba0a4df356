# The two commands a new user runs on a fresh clone: `make demo` and `make test`.
# Each creates .venv inside the repo (Python >= 3.10) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean check-aarch64

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alexnet-demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The runtime on aarch64 (Jetson's CPU) under qemu-user in a cached Debian arm64 root; needs root and
# network access to Debian and PyPI (see scripts/check_aarch64.sh and the README's Jetson section).
check-aarch64: $(STAMP)
	PYTHON=$(abspath $(PY)) bash scripts/check_aarch64.sh

clean:
	rm -rf $(VENV) artifacts .pytest_cache
