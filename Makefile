# One command sets up a fresh machine and runs the tests (`make test`); one runs the main job
# (`make demo`). The CPU torch pin is installed before the project so that pip never pulls the
# multi-GB CUDA build; requirements.lock pins everything else.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
TORCH_PIN ?= torch==2.13.0

.PHONY: all install browser test pytest lint demo bench stamp-corpus clean
all: lint pytest

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -c requirements.lock -e '.[dev,quantize]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Debian's chromium and its driver, for the gallery's real-browser test (tests/test_gallery.py).
browser:
	@if [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "tests/test_gallery.py needs Debian's chromium and chromedriver; install them with:" >&2; \
	    echo "  sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2; \
	    exit 1; \
	  fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q chromium chromium-driver \
	    || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }; \
	fi

pytest: install browser
	$(PY) -m pytest

test: lint pytest

# The embedded default: local Ray, Prefect's ephemeral API, local disk, the shipped model.
demo: install
	PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 $(VENV)/bin/archive-colorize demo

# Quiet the way `make demo` is: no analytics from the ephemeral Prefect server.
bench: export PREFECT_SERVER_ANALYTICS_ENABLED = false
bench: export DO_NOT_TRACK = 1
bench: install
	$(PY) bench/bench_core.py
	$(PY) bench/bench_archive.py
	$(PY) bench/bench_ceiling.py
	$(PY) bench/bench_training_data.py

# More training colours: the photographic cut-outs of Debian's tuxpaint-stamps-default (GPL-2),
# downloaded (not installed) and selected by the rule in pipeline/training/stamps.py.
STAMPS ?= stamps
stamp-corpus: install
	@mkdir -p $(STAMPS)/.deb
	cd $(STAMPS)/.deb && { ls tuxpaint-stamps-default_*.deb >/dev/null 2>&1 \
	  || apt-get download tuxpaint-stamps-default; }
	dpkg-deb -x $(STAMPS)/.deb/tuxpaint-stamps-default_*.deb $(STAMPS)/.deb/root
	$(VENV)/bin/archive-colorize stamps $(STAMPS)/.deb/root $(STAMPS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
