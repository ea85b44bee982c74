# sslwrap — build, install, test, demo and benchmark.
# `make` builds the release binary; `make install` puts it where every old inetd.conf line expects it.

PREFIX  ?= /usr/local
DESTDIR ?=
SBINDIR  = $(DESTDIR)$(PREFIX)/sbin
MAN8DIR  = $(DESTDIR)$(PREFIX)/share/man/man8
# Where systemd looks for locally installed units.
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
UNITS    = $(wildcard systemd/*.socket systemd/*.service)
CARGO   ?= cargo
BIN      = target/release/sslwrap

# Debian packages the build and the test suites use; compat-tests/, bench/ and soak/ list their own.
BUILD_PACKAGES = build-essential pkg-config libssl-dev openssl
TEST_PACKAGES  = python3 procps util-linux mandoc groff-base ucspi-tcp socat curl gnutls-bin
PACKAGE_LISTS  = $(wildcard compat-tests/packages tests/packages soak/packages)
SOURCES        = Cargo.toml Cargo.lock build.rs $(shell find src -name '*.rs' 2>/dev/null)

.PHONY: all build install install-systemd uninstall check test lint compat demo bench bench-smoke deps clean \
        fuzz fuzz-smoke fuzz-tools fuzz-corpus soak

all: $(BIN)

build:
	$(CARGO) build --release --locked

# A file target, so `sudo make install` after `make` does not run cargo again as root.
$(BIN): $(SOURCES)
	$(CARGO) build --release --locked

install: $(BIN)
	install -d $(SBINDIR) $(MAN8DIR)
	install -m 755 $(BIN) $(SBINDIR)/sslwrap
	install -m 644 man/sslwrap.8 $(MAN8DIR)/sslwrap.8

# The units in systemd/, naming the binary where `make install` puts it.
install-systemd:
	install -d $(DESTDIR)$(SYSTEMDUNITDIR)
	for unit in $(UNITS); do \
	  sed 's|/usr/local/sbin/sslwrap|$(PREFIX)/sbin/sslwrap|' $$unit > $(DESTDIR)$(SYSTEMDUNITDIR)/$$(basename $$unit); \
	  chmod 644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$(basename $$unit); \
	done

uninstall:
	rm -f $(SBINDIR)/sslwrap $(MAN8DIR)/sslwrap.8
	for unit in $(UNITS); do rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/$$(basename $$unit); done

# Every test: unit and integration tests (real OpenSSL clients against the real binary), lint, the
# compatibility suite under real superservers and mail servers, and a short run of every fuzz target.
check: deps lint test compat bench-smoke fuzz-smoke

test: build
	$(CARGO) test --release --locked -- --test-threads=4

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml --all -- --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings
	@out=$$(mandoc -Tlint -W warning man/sslwrap.8 2>&1); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	@out=$$(groff -ww -man -Tutf8 man/sslwrap.8 2>&1 >/dev/null); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	@echo "lint: fmt, clippy and man page clean"

# The suite runs in a mount namespace of its own, never on the host's paths; with-live-installation makes the machine
# look like a live sslwrap 2.0.6 installation first (also in a namespace of its own) and fails unless it survives.
compat: build
	@if [ -x compat-tests/run ]; then \
	  SSLWRAP_BIN=$(CURDIR)/$(BIN) compat-tests/with-live-installation compat-tests/run; \
	else echo "compat-tests/run missing"; exit 1; fi

# Installs missing Debian packages as root; otherwise prints the exact command and fails.
deps:
	@missing=""; \
	for pkg in $(BUILD_PACKAGES) $(TEST_PACKAGES) $$(cat $(PACKAGE_LISTS) /dev/null | sed 's/#.*//'); do \
	  dpkg-query -W -f='$${Status}\n' $$pkg 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then echo "deps: all Debian packages present"; exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "deps: missing packages; run: apt-get install$$missing"; exit 1; fi; \
	echo "deps: installing$$missing"; \
	guard=""; if [ ! -e /usr/sbin/policy-rc.d ]; then \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; guard=1; fi; \
	(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing); rc=$$?; \
	if [ -n "$$guard" ]; then rm -f /usr/sbin/policy-rc.d; fi; exit $$rc

# Runs sslwrap in daemon mode on 127.0.0.1:8443 in front of a built-in echo backend (-exec /bin/cat), with a
# throw-away self-signed certificate. Ctrl-C stops it.
# A TLS echo service for trying sslwrap by hand; PORT=N picks the port. Stopping make (or Ctrl-C) stops it and
# removes its files.
PORT ?= 8443
demo: $(BIN)
	@exec setpriv --pdeathsig TERM demo/run $(PORT) $(BIN)

bench: build
	@if [ -x bench/run ]; then bench/run; else echo "bench/run missing"; exit 1; fi

# What -certdir costs an inetd-mode connection: 1,000 certificates against that name's -cert alone, medians of
# sequential connections (the target, at most 10% more, is in the table's targets when run in full).
.PHONY: bench-certdir
bench-certdir: build
	bench/run --only certdir

# The benchmark driver still runs (tiny sizes, sslwrap only) and the load client's own checks pass (its integrity
# check must catch an altered byte); timings are not judged here.
bench-smoke: build
	$(CARGO) test --release --locked --quiet --manifest-path bench/loadgen/Cargo.toml
	@if [ -x bench/run ]; then bench/run --smoke; else echo "bench-smoke: bench/run not present yet, skipped"; fi

# Coverage-guided fuzzing (fuzz/, cargo-fuzz with libFuzzer on the stable toolchain): every target runs FUZZ_SECONDS
# from the committed seeds; a crash fails and names the input (fuzz/artifacts/TARGET/). fuzz/RESULTS.md has the last
# long run.
CARGO_FUZZ_VERSION = 0.13.1
FUZZ_SECONDS ?= 300
FUZZ_SMOKE_SECONDS ?= 15

fuzz: fuzz-tools
	fuzz/run $(FUZZ_SECONDS)

# Each target for FUZZ_SMOKE_SECONDS: keeps the targets building and their checks passing.
fuzz-smoke: fuzz-tools
	fuzz/run $(FUZZ_SMOKE_SECONDS)

# cargo-fuzz, installed with cargo unless this version is there already.
fuzz-tools:
	@if $(CARGO) fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)'; then \
	  echo "fuzz-tools: cargo-fuzz $(CARGO_FUZZ_VERSION) present"; \
	else $(CARGO) install --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION); fi

# Records the seed corpus again from real sessions (root; dovecot, aiosmtpd, curl, openssl: tests/packages).
fuzz-corpus: build
	fuzz/make-corpus

# A long soak, not part of check (about 90 minutes on two cores): one daemon and 1,000,000 connections (SOAK_N), and
# inetd mode under tcpserver with 100,000 (SOAK_INETD_N), a mix of clean and failing sessions, judged every 10,000
# connections (zombies, descriptors, RSS, session processes, syslog lines). Writes soak/RESULTS.md and soak/soak.svg;
# SOAK_STOP_AT=HH:MM (UTC) stops it early and says so. Needs root (dovecot).
soak: build
	soak/run

clean:
	$(CARGO) clean
	rm -rf fuzz/target fuzz/artifacts
