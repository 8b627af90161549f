# Every target sets up what it needs from nothing: system packages, .venv, Python packages.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test bench lint system services clean

# bubblewrap gives the scoring sandbox its namespaces; without it, unshare (as root).
# With neither, scoring refuses to run (unless scoring.isolation = "none" is written out).
# Per-sample memory and process limits need cgroup v2 with the memory and pids
# controllers: say so when they are missing (rlimits per process remain).
system:
	@if ! command -v bwrap >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
			|| echo "warning: could not install bubblewrap; the sandbox needs unshare and root"; \
		else echo "warning: bubblewrap is not installed; the sandbox needs unshare and root"; fi; \
	fi
	@cg=$$(awk '{for (i = 7; i < NF; i++) if ($$i == "-") { if ($$(i + 1) == "cgroup2") { print $$5; exit } break }}' /proc/self/mountinfo); \
	if [ -z "$$cg" ]; then echo "note: no cgroup v2 here: memory and processes are limited per process, not per sample"; \
	else for c in memory pids; do grep -qw $$c "$$cg/cgroup.controllers" 2>/dev/null \
		|| echo "note: cgroup v2 at $$cg has no $$c controller: that limit is per process, not per sample"; done; fi

# The PostgreSQL store's tests need the local server (127.0.0.1:5432, trust auth).
services:
	@if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432; then \
		pg_ctlcluster --skip-systemctl-redirect "$$(ls /etc/postgresql | head -n1)" main start \
		|| echo "warning: could not start PostgreSQL; its tests will fail"; \
	fi

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

run: system $(STAMP)
	mkdir -p var
	$(BIN)/rollwatch --config config/rollwatch.toml serve

test: system services $(STAMP)
	$(BIN)/pytest -q

bench: system services $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var
