# Two commands do all set-up on a fresh Debian/Ubuntu machine with Python 3.11:
#   make run    - the live controller against the simulated site, with its dashboard
#   make test   - the whole test suite (installs the Debian peers the tests use)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
DEBIAN_TEST_PACKAGES := mosquitto victoria-metrics socat chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
SPEED ?= 1

.PHONY: run test lint bench clean system-test-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP) $@

system-test-deps:
	@missing=""; \
	for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

run: $(STAMP)
	$(BIN)/ems run --simulate --speed $(SPEED)

# The suite runs on every core (at most 4 workers): most tests wait on loopback peers and the simulated clock,
# and the two long ones (the soak week, the cost-over-a-day run) then run beside the rest instead of after it.
test: system-test-deps $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist load

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/bench_planner.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
