# Every command a reader needs. `make test` sets everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# One stamp per install, named after pyproject.toml's hash: editing it reinstalls. The docs need only their group.
PYPROJECT_HASH := $(shell sha1sum pyproject.toml | cut -c1-12)
STAMP := $(VENV)/.installed-all-$(PYPROJECT_HASH)
DOCS_STAMP := $(VENV)/.installed-docs-$(PYPROJECT_HASH)
NEWEST := $(shell ls -d phase[0-9]*_*/ | sort -V | tail -n 1 | tr -d /)
HOST ?= 127.0.0.1
PORT ?= 8080
PHASE ?= $(NEWEST)
# A phase that speaks TLS (its CAPABILITIES say "tls") is run with the development certificate of `make cert`.
CERTS := certs
PHASE_TLS := $(shell grep -qs '"tls"' $(PHASE)/__init__.py && echo yes)
PY_SOURCES := phase*/ tests/ tools/ bench/
# The root conftest.py is checked on its own: mypy would see two top-level modules named `conftest`.
ROOT_CONFTEST := conftest.py
# Material's banner about MkDocs 2 says nothing about our build.
export NO_MKDOCS_2_WARNING := 1

.PHONY: run test lint typecheck pytest docs serve-docs diffs diffs-check bench bench-echo bench-parser bench-router \
	bench-sendfile bench-tls-io bench-tls-resumption bench-abuse bench-workers bench-ablation bench-costs bench-layers bench-interpreters flame \
	mutation system-tools browser-tools bench-tools clean cert

run: $(if $(PHASE_TLS),$(CERTS)/server.pem)  ## serve the newest phase on $(HOST):$(PORT) (PHASE=... for another)
	$(PYTHON) -m $(PHASE) --host $(HOST) --port $(PORT) \
	  $(if $(PHASE_TLS),--tls-cert $(CERTS)/server.pem --tls-key $(CERTS)/server.key)

# A development certificate authority and a server certificate it signed for localhost and 127.0.0.1, both
# ECDSA P-256 keys, by openssl (always there on Debian): certs/ is git-ignored, and no key in it protects
# anything but a reader's own machine. The authority is kept apart, so a client can trust it (--cacert).
cert: $(CERTS)/server.pem  ## a development CA and server certificate in certs/, and the curl line that trusts it
	@echo "curl --cacert $(CERTS)/ca.pem https://localhost:$(PORT)/   # once make run PHASE=<a TLS phase> serves"

$(CERTS)/server.pem:
	mkdir -p $(CERTS)
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -days 365 \
	  -subj "/CN=HTTP from first principles, development CA" -keyout $(CERTS)/ca.key -out $(CERTS)/ca.pem \
	  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
	openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc -subj "/CN=localhost" \
	  -keyout $(CERTS)/server.key -out $(CERTS)/server.csr 2>/dev/null
	printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=critical,CA:FALSE" \
	  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" "subjectKeyIdentifier=hash" \
	  "authorityKeyIdentifier=keyid" > $(CERTS)/server.ext
	openssl x509 -req -in $(CERTS)/server.csr -CA $(CERTS)/ca.pem -CAkey $(CERTS)/ca.key -CAcreateserial \
	  -days 365 -extfile $(CERTS)/server.ext -out $(CERTS)/server.pem 2>/dev/null
	rm -f $(CERTS)/server.csr $(CERTS)/server.ext $(CERTS)/ca.srl

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check '.[dev,docs,bench]'
	rm -f $(VENV)/.installed-* && touch $@ $(DOCS_STAMP)

$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check '.[docs]'
	rm -f $(VENV)/.installed-docs-* && touch $@

# $(call apt_install,PACKAGES) in a recipe, as root: says what it installs in one line, then apt-get update and
# install, each waiting up to 10 minutes for another apt-get (unattended-upgrades on a fresh machine, a second
# make) instead of failing. install waits for the dpkg lock itself (DPkg::Lock::Timeout); update does not wait
# for its own lock, /var/lib/apt/lists/lock (apt 2.6 fails at once), so it is retried every 5 s while that
# lock is what stops it, and any other failure (the network) fails at once.
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
apt_install = echo "installing with apt-get:$(1)"; \
	for attempt in $$(seq 120); do \
	  errors=$$($(APT_GET) update -qq 2>&1) && break; \
	  case "$$errors" in *"Could not get lock"*) sleep 5;; *) echo "$$errors" >&2; exit 1;; esac; \
	done; \
	$(APT_GET) install -y -qq $(1) >/dev/null

# wrk (the load) and strace (bench-costs) are Debian packages: installed when we are root (as CI is),
# otherwise the tests that need them say so.
system-tools:
	@missing=""; \
	for tool in wrk strace; do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    $(call apt_install,$$missing); \
	  else echo "note: not installed:$$missing (apt-get install$$missing); the tests that need them will skip"; fi; \
	fi

# Chromium and its WebDriver, for tests/test_site.py, which reads every page of the book in a real browser: a
# target of its own, so that `make flame` and the bench, which need system-tools, do not install a browser.
browser-tools:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    $(call apt_install,$$missing); \
	  else echo "note: not installed:$$missing (apt-get install$$missing); tests/test_site.py will skip"; fi; \
	fi

# The benchmark's peers: nginx, and the crate sources of the Rust hyper server.
# Installed when we are root; otherwise the harness skips each peer whose tool is missing and prints why.
bench-tools: system-tools
	@missing=""; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	for package in librust-hyper-dev librust-tokio-dev python3-venv; do \
	  dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    $(call apt_install,$$missing); \
	  else echo "note: not installed:$$missing (apt-get install$$missing); the bench skips what needs them"; fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy $(PY_SOURCES)
	$(VENV)/bin/mypy $(ROOT_CONFTEST)

pytest: $(STAMP) system-tools browser-tools
	$(PY) -m pytest

test: lint typecheck pytest diffs-check docs

diffs: $(STAMP)
	$(PY) tools/gen_diffs.py

diffs-check: $(STAMP)
	$(PY) tools/gen_diffs.py --check

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

serve-docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs serve --strict

# The full runs publish: they write the results files the docs are drawn from, and redraw the docs. Any other
# run of a harness (`$(PY) -m bench --targets ...`) is exploratory: bench/results/exploratory-*.json only.
# The interpreter of every Python server in `make bench`: `fastest` is the build bench/results/interpreters.json
# names (make bench-interpreters); a path chooses another.
BENCH_PYTHON ?= fastest

bench: $(STAMP) bench-tools
	$(PY) -m bench --publish --python $(BENCH_PYTHON)

bench-interpreters: $(STAMP) bench-tools  ## phase 6 on every Python interpreter here (venv, pyenv, /usr/bin): the fastest build
	$(PY) -m bench.interpreters --publish

bench-echo: $(STAMP)
	$(PY) -m bench.echo --publish

bench-parser: $(STAMP)  ## the parser microbenchmark, on the newest phase with a protocol.py (PHASE=... for another)
	taskset --cpu-list 1 $(PY) -m bench.parser_micro --publish $(if $(filter command line,$(origin PHASE)),--phase $(PHASE))

bench-router: $(STAMP)  ## the router microbenchmark, on the newest phase with a router.py (PHASE=... for another)
	taskset --cpu-list 1 $(PY) -m bench.router_micro --publish $(if $(filter command line,$(origin PHASE)),--phase $(PHASE))

bench-sendfile: $(STAMP)  ## os.sendfile against pread + send: CPU per 64 KiB file (pins itself to CPUs 1 and 0)
	$(PY) -m bench.sendfile_micro --publish

bench-tls-io: $(STAMP) system-tools  ## TLS in an epoll loop: SSLObject over memory BIOs against SSLSocket (strace)
	$(PY) -m bench.tls_io --publish

bench-tls-resumption: $(STAMP)  ## phase 8: how often a TLS session resumes, with 1, 2 and 4 workers
	$(PY) -m bench.tls_resumption --publish

# The attacks of chapter 3 on phase 3 as it was before its defences (commit 8be1d17, extracted by git archive
# into a temporary directory), then on phase 3 as it is.
BEFORE_DEFENCES := 8be1d17
bench-abuse: $(STAMP)  ## the attacks of chapter 3, before and after its defences (a few minutes, mostly waiting)
	before=$$(mktemp -d) && trap 'rm -rf "$$before"' EXIT && \
	git archive $(BEFORE_DEFENCES) phase3_http_parse | tar -x -C "$$before" && \
	$(PY) -m bench.abuse --publish --label "before ($(BEFORE_DEFENCES))" --phase-dir "$$before/phase3_http_parse" && \
	$(PY) -m bench.abuse --publish --label after

bench-workers: $(STAMP) system-tools  ## phase 5: the three models, kill -9, SIGTERM, SIGHUP, the SO_REUSEPORT trap
	$(PY) -m bench.workers --publish

bench-ablation: $(STAMP) bench-tools  ## phase 6: each optimisation turned off in turn, one run
	$(PY) -m bench.ablation --publish

bench-costs: $(STAMP) bench-tools  ## nginx, phases 5 to 7, the floor: user and system CPU, system calls per request
	$(PY) -m bench.costs --publish

# Phase 6's round two is measured against phase 6 as it was before the round: this commit's, extracted by git
# archive into a temporary directory, beside the phase as it is.
BEFORE_ROUND := e302332
bench-layers: $(STAMP) bench-tools  ## phase 6: where each microsecond of a request goes, before and after round two (~12 min)
	before=$$(mktemp -d) && trap 'rm -rf "$$before"' EXIT && \
	git archive $(BEFORE_ROUND) phase6_perf | tar -x -C "$$before" && \
	$(PY) -m bench.layers --publish --before-dir "$$before/phase6_perf" --before-label "before ($(BEFORE_ROUND))"

flame: $(STAMP) system-tools  ## a flamegraph of $(PHASE) under load, published in docs/assets/flame/
	$(PY) -m bench.flame --phase $(PHASE) --publish

mutation: $(STAMP)  ## mutation testing of the phases' code (mutmut): which changes do the tests not catch?
	$(PY) tools/mutation.py

clean:
	rm -rf site .mypy_cache .ruff_cache .pytest_cache .hypothesis

# `make help`: what `make test` does, costs and installs, the targets without a `## ` comment that a reader
# types, then every target whose line has one (read from this file, so the list cannot drift from it).
.PHONY: help
help:  ## this list
	@echo "Run from the repository root."
	@echo ""
	@echo "  make test             create .venv and run every check, in order, as CI does: ruff check, ruff format"
	@echo "                        --check, mypy --strict, pytest (every phase), tools/gen_diffs.py --check and"
	@echo "                        mkdocs build --strict. About 15-20 minutes, as measured on a 2-core machine,"
	@echo "                        most of it pytest. It installs the Python packages of pyproject.toml (groups"
	@echo "                        dev, docs and bench) into .venv with pip and, when run as root, wrk, strace,"
	@echo "                        chromium and chromium-driver with apt-get (not as root: the tests that need"
	@echo "                        them say so and are skipped)."
	@echo "  make lint, make typecheck, make pytest, make diffs-check, make docs"
	@echo "                        one step of make test each"
	@echo "  make docs             build the book into site/ (strict); make serve-docs serves it on port 8000"
	@echo "  make diffs            regenerate docs/diffs/ after changing a phase"
	@echo "  make bench            the HTTP benchmarks (wrk), published; as root, installs wrk, strace, nginx"
	@echo "                        and the hyper crates first"
	@echo "  make bench-echo       the echo chapters' benchmark: phase 1 against 2, level against edge trigger"
	@echo "  make clean            remove the built site and the tools' caches (not .venv)"
	@echo ""
	@awk '/^[a-z][a-z-]*:.*## / { target = $$1; sub(/:.*/, "", target); text = $$0; sub(/^[^#]*## /, "", text); \
	  printf "  make %-17s%s\n", target, text }' $(firstword $(MAKEFILE_LIST)) | sed -E 's/\$$\(([A-Z]+)\)/\1/g'
