# Every target sets up what it needs from nothing: system packages, .venv, Python packages.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: run test bench lint lock install system services clean compile

# Tests spend much of their time waiting on subprocesses and timers (daemons, sandboxes,
# schedules, leases, a browser): two pytest-xdist workers more than there are cores, at
# least four, keep the cores busy (session 26, the whole suite on 2 cores: 591 s with three
# workers, 518-537 s with four, the cores 86% busy; session 12: 596 s with three against
# 668 s with two).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); n=$$((n + 2)); [ $$n -lt 4 ] && n=4; echo $$n)

# Where `make install` puts the service: its own virtual environment, no dev tools.
PREFIX ?= /opt/rollwatch

# bubblewrap gives the scoring sandbox its namespaces; without it, unshare (as root).
# With neither, scoring refuses to run (unless scoring.isolation = "none" is written out).
# Per-sample memory and process limits need cgroup v2 with the memory and pids
# controllers: say so when they are missing (rlimits per process remain).
system:
	@if ! $(PY) -c 'import ensurepip, venv' >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv; \
	fi
	@if ! command -v bwrap >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
			|| echo "warning: could not install bubblewrap; the sandbox needs unshare and root"; \
		else echo "warning: bubblewrap is not installed; the sandbox needs unshare and root"; fi; \
	fi
	@# The browser tests (tests/web/test_browser.py) drive Debian's chromium through Playwright;
	@# Playwright's own browser download is never used (no downloads outside the registries).
	@if [ ! -x /usr/bin/chromium ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			|| echo "warning: could not install chromium; the browser tests will fail"; \
		else echo "warning: /usr/bin/chromium is missing (apt-get install chromium); the browser tests will fail"; fi; \
	fi
	@# The storage-fault tests (tests/test_storage_faults.py) hold the log's lock from the sqlite3 shell.
	@if ! command -v sqlite3 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqlite3) \
		|| echo "warning: could not install sqlite3; a storage-fault test will fail"; \
	fi
	@# The durability tests (tests/integrity/test_witness.py) watch a process's fsyncs with strace.
	@if ! command -v strace >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace) \
		|| echo "warning: could not install strace; the fsync tests will be skipped"; \
	fi
	@# The clock tests (tests/publication/test_clock.py) run the daemon under libfaketime.
	@if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime) \
			|| echo "warning: could not install faketime; the clock tests will be skipped"; \
		else echo "warning: faketime is not installed (apt-get install faketime); the clock tests will be skipped"; fi; \
	fi
	@cg=$$(awk '{for (i = 7; i < NF; i++) if ($$i == "-") { if ($$(i + 1) == "cgroup2") { print $$5; exit } break }}' /proc/self/mountinfo); \
	if [ -z "$$cg" ]; then echo "note: no cgroup v2 here: memory and processes are limited per process, not per sample"; \
	else for c in memory pids; do grep -qw $$c "$$cg/cgroup.controllers" 2>/dev/null \
		|| echo "note: cgroup v2 at $$cg has no $$c controller: that limit is per process, not per sample"; done; fi

# The PostgreSQL store's tests need a server with trust auth and a database `test`: the
# local one, started if it is down, or a throwaway cluster of our own (installing the
# server first on a machine without one). scripts/test-postgres prints its URL.
services:
	@scripts/test-postgres >/dev/null

# requirements.lock pins every package (CI, the tests and an install all get the set
# that was tested); `make lock` refreshes it from the newest releases pyproject allows.
$(STAMP): pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q '.[dev,bench]'
	{ head -n 2 requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^rollwatch' | sort -f; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

run: system $(STAMP) compile
	mkdir -p var
	$(BIN)/rollwatch --config config/rollwatch.toml serve

# Every Python the tests and benchmarks start imports rollwatch: compiled once here, each one
# loads it in 0.6 s rather than compiling it anew for 0.9 s (PYTHONDONTWRITEBYTECODE, set on
# these machines, stops Python writing what it compiles; it still reads what is compiled).
compile: $(STAMP)
	@$(BIN)/python -m compileall -q src/rollwatch

# The tests' files (every tmp_path, every tempfile: logs, trees, state) live on a tmpfs of
# their own, removed afterwards. Each SQLite commit fsyncs; on this machine's disk, shared
# with other work, one fsync takes 5-10 ms, and a test appending a few thousand events
# waited on them: the property test of the public aggregates took 22-30 s on /tmp and 5-7 s
# here (the same SQLite, the same calls; no test cuts power, so none can tell the
# difference). Mode 1777 as /tmp: the scoring sandboxes' folders in it are entered by the
# samples' own uids. Without a writable /dev/shm, the usual temporary folder.
TEST_TMP_ROOT ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && echo /dev/shm || echo $${TMPDIR:-/tmp})

test: system $(STAMP) compile
	pg="$$(scripts/test-postgres)" && tmp="$$(mktemp -d $(TEST_TMP_ROOT)/rwt.XXXXXX)" && chmod 1777 "$$tmp" && \
	trap 'rm -rf "$$tmp"' EXIT && TMPDIR="$$tmp" ROLLWATCH_TEST_PG="$$pg" \
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15 --basetemp="$$tmp/t"

bench: system $(STAMP) compile
	$(BIN)/pip install -q -c requirements.lock -e '.[dev,bench]'
	pg="$$(scripts/test-postgres)" && ROLLWATCH_BENCH_PG="$$pg" $(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff format --check src tests bench
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

# A real install: the package built from this checkout into $(PREFIX)/venv with only its
# runtime dependencies, at the locked versions; nothing links back to the checkout. An
# upgrade is the same command from the new checkout, then a restart. The wheel is built
# once (each `pip install .` builds it anew in a fresh build environment: 6 s of 17 here).
install: system
	$(PY) -m venv $(PREFIX)/venv
	$(PREFIX)/venv/bin/pip install -q --upgrade pip
	wheels="$$(mktemp -d)" && trap 'rm -rf "$$wheels"' EXIT && \
	$(PREFIX)/venv/bin/pip wheel -q --no-deps -c requirements.lock -w "$$wheels" . && \
	$(PREFIX)/venv/bin/pip install -q --force-reinstall --no-deps "$$wheels"/rollwatch-*.whl && \
	$(PREFIX)/venv/bin/pip install -q -c requirements.lock "$$wheels"/rollwatch-*.whl
	install -m 0644 README.md systemd/rollwatch.service $(PREFIX)/

clean:
	rm -rf $(VENV) var
