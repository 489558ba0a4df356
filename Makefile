# The two commands a new user runs on a fresh clone: `make demo` and `make test`.
# Each creates .venv inside the repo (Python >= 3.10) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean check-aarch64 check-gpu

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alexnet-demo

# Some tests use Debian packages: qemu-user-static (ONNX Runtime's AVX2 kernels under qemu-user, whatever this CPU
# is), gst-rtsp-server (a real RTSP server for streams), the system numpy (a Jetson-style venv). They are installed
# here when root can apt-get them (scripts/install_test_debs.sh), otherwise those tests skip and say why.
test: $(STAMP)
	@bash scripts/install_test_debs.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The runtime on aarch64 (Jetson's CPU) under qemu-user in a cached Debian arm64 root; needs root and
# network access to Debian and PyPI (see scripts/check_aarch64.sh and docs/jetson.md).
check-aarch64: $(STAMP)
	PYTHON=$(abspath $(PY)) bash scripts/check_aarch64.sh

# The GPU half (scripts/check_gpu.sh, docs/gpu-check.md) on a machine with an NVIDIA GPU and the staged wheels,
# offline; no venv: it runs with the interpreter that has torch (PYTHON, default python3). CHECK_GPU_ARGS passes
# options, e.g. make check-gpu CHECK_GPU_ARGS="--cpu-folder .gpu-check/cpu-built" or CHECK_GPU_ARGS=--dry-run.
check-gpu:
	PYTHON=$(PYTHON) bash scripts/check_gpu.sh $(CHECK_GPU_ARGS)

clean:
	rm -rf $(VENV) artifacts .pytest_cache
