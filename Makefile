# pepsal: `make demo` and `make test` are the two commands (as root, on Debian).
SHELL   := /bin/bash
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

# Debian packages the build, the tests and `make generate` need (systemd
# and man-db: the package test verifies the unit and renders a man page).
APT_PKGS := clang llvm libbpf-dev linux-libc-dev bpftool iproute2 ethtool util-linux nginx curl nghttp2-client openssh-server openssh-client socat openssl systemd cpio nftables iptables man-db

# make install [PREFIX=/usr/local] [DESTDIR=...]: binary, systemd unit, flags file, docs.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/pepsal

.PHONY: build generate unit fuzz fuzz-short lint notice test test-kernels bench demo deps check-root check-go clean install package

build: check-go
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/pepsal ./cmd/pepsal

# Rebuild the committed BPF objects and their Go bindings (needs clang, not
# root: as root the packages are installed when missing).
generate: check-go
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory deps; fi
	@command -v clang >/dev/null || { echo "error: clang is needed (Debian: apt-get install clang llvm libbpf-dev linux-libc-dev, or make deps as root)" >&2; exit 1; }
	$(GO) generate ./loader

# The developer loop: the tests that need no root, in under a minute. Under
# -short the tests that need root (BPF, network namespaces) skip themselves
# when not root; tests/integration needs root throughout and is left out.
UNIT_PKGS = $(shell $(GO) list -buildvcs=false ./... | grep -v /tests/integration)
unit: check-go
	$(GO) test -short -count=1 -timeout 5m $(UNIT_PKGS)

# The fuzz targets, PACKAGE:TARGET: what pepsal parses from the network
# (the warm-path hello and header, a terminal's connection to the gateway,
# both sides of the control socket) and from its flags. Their seeds run
# with the unit tests; `make fuzz` fuzzes each for FUZZTIME (one:
# FUZZ_TARGETS=./userspace/peer:FuzzGatewayConn), `make fuzz-short`, run by
# `make test`, for FUZZTIME_SHORT each (about 40 s in all once built; the
# first build instruments every package, a few minutes). An input that
# fails is written to the package's testdata/fuzz: commit it with the fix.
FUZZ_TARGETS ?= ./userspace/peer:FuzzPeerHeaderRoundTrip ./userspace/peer:FuzzPeerDecodeHeader ./userspace/peer:FuzzPeerAuth ./userspace/peer:FuzzParseKeys \
	./userspace/peer:FuzzGatewayConn ./userspace/daemon:FuzzControlRequest ./userspace/report:FuzzExchange \
	./cmd/pepsal:FuzzParsePorts ./cmd/pepsal:FuzzParsePrefix ./cmd/pepsal:FuzzParseSize
FUZZTIME       ?= 10m
FUZZTIME_SHORT ?= 3s
# fuzz_each,TIME,FILTER: each target in turn for TIME, its output through FILTER.
fuzz_each = set -eo pipefail; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t\#\#*:} ($${t%%:*}) for $(1)"; \
		$(GO) test -run '^$$' -fuzz "^$${t\#\#*:}\$$" -fuzztime $(1) $${t%%:*} 2>&1 | $(2); \
	done
fuzz: check-go
	@$(call fuzz_each,$(FUZZTIME),cat)
fuzz-short: check-go
	@$(call fuzz_each,$(FUZZTIME_SHORT),grep -v '^fuzz: elapsed')

# go vet and staticcheck; staticcheck is installed in bin/tools, pinned (a
# release that knows this Go: 2026.2.2 for Go 1.26).
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CURDIR)/bin/tools/staticcheck-$(STATICCHECK_VERSION)
lint: check-go $(STATICCHECK)
	$(GO) vet ./...
	$(STATICCHECK) ./...
	$(GO) vet -tags pepsal_gendocs ./cmd/pepsal # the man page generator of make package
	$(STATICCHECK) -tags pepsal_gendocs ./cmd/pepsal
	$(GO) run ./tests/cmd/pepsal-notice --check

# NOTICE: the licences of the modules linked into pepsal (a new or updated
# dependency changes it; lint and the unit tests say when it is stale).
notice: check-go
	$(GO) run ./tests/cmd/pepsal-notice

$(STATICCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(CURDIR)/bin/tools/staticcheck $@

test: check-root deps check-go unit fuzz-short
	$(GO) vet ./...
	$(GO) test -p 1 -count=1 -timeout 14m ./... # one package at a time: the memory and timing tests read machine-wide counters

# The kernel matrix: the test suites under other kernels (Debian's packages,
# booted by qemu with this machine's root shared read-only; tests/kmatrix).
# KERNELS: labels (6.1, 6.12, 6.18), LABEL=PACKAGE-REGEXP or LABEL=FILE.deb;
# KERNEL_TESTS: a regexp of top-level tests (default: all); KERNEL_OUT: where
# the binaries, logs and the table go (default: a new directory in /tmp).
KMATRIX_PKGS := qemu-system-x86 busybox-static zstd xz-utils kmod
KERNELS      ?= 6.1,6.12,6.18
KERNEL_TESTS ?=
KERNEL_OUT   ?=
test-kernels: check-root deps check-go
	@missing=""; for p in $(KMATRIX_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(GO) build -o bin/pepsal-kernels ./tests/cmd/pepsal-kernels
	bin/pepsal-kernels --kernels '$(KERNELS)' --tests '$(KERNEL_TESTS)' $(if $(KERNEL_OUT),--out '$(KERNEL_OUT)') run

# Only `make bench` and `make demo` need these (the page-load part: a real
# browser, a web server, iptables for the reference PEPs), without recommends.
BENCH_PKGS := chromium-headless-shell nginx iptables

# Benchmark suite: prints tables, writes BENCHMARKS.md whole and its charts in docs/bench
# (~35 min; PEPSAL_BENCH_QUICK=1 for a few minutes, prints only; other PEPSAL_BENCH_*
# variables are described in BENCHMARKS.md). BENCHMARKS-ANALYSIS.md is written by hand.
bench: check-root deps bench-deps build
	$(GO) build -o bin/pepsal-bench ./tests/cmd/pepsal-bench
	bin/pepsal-bench --pepsal bin/pepsal --out BENCHMARKS.md bench

# GEO test beds: no proxy, pepsal on the gateway, pepsal at both ends with warm paths; downloads and page loads in Chromium (< 5 min).
demo: check-root deps bench-deps build
	$(GO) build -o bin/pepsal-bench ./tests/cmd/pepsal-bench
	bin/pepsal-bench --pepsal bin/pepsal demo

.PHONY: bench-deps
bench-deps: check-root
	@missing=""; for p in $(BENCH_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

check-root:
	@if [ "$$(id -u)" != 0 ]; then echo "error: run as root (network namespaces and BPF need it)" >&2; exit 1; fi

check-go:
	@command -v $(GO) >/dev/null || { echo "error: Go >= 1.24 is needed (https://go.dev/dl), not found in PATH" >&2; exit 1; }

deps: check-root
	@missing=""; for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The flags file is installed only when absent: it holds the operator's settings.
install: build
	install -D -m 0755 bin/pepsal $(DESTDIR)$(BINDIR)/pepsal
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's#@BINDIR@#$(BINDIR)#g' -e 's#@SYSCONFDIR@#$(SYSCONFDIR)#g' -e 's#@DOCDIR@#$(DOCDIR)#g' \
		cmd/pepsal/systemd/pepsal.service.in > $(DESTDIR)$(UNITDIR)/pepsal.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/pepsal.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/default/pepsal ]; then echo "keeping $(DESTDIR)$(SYSCONFDIR)/default/pepsal"; \
	else install -D -m 0644 cmd/pepsal/systemd/pepsal.env $(DESTDIR)$(SYSCONFDIR)/default/pepsal; fi
	install -D -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -D -m 0644 DEPLOYING.md $(DESTDIR)$(DOCDIR)/DEPLOYING.md

# make package: dist/pepsal_DEBVERSION_ARCH.deb for each of PKG_ARCHES,
# cross-compiled without cgo (the BPF objects are embedded, little-endian
# like both). A package holds /usr/sbin/pepsal, the unit, /etc/default/pepsal
# (a conffile), man pages (section 8) and bash, zsh and fish completions,
# written by a build with -tags pepsal_gendocs (the shipped binary has no
# such command). The version comes from git (VERSION, above): a release is a
# tag vMAJOR.MINOR.PATCH (git tag -a v1.0.0 -m 'pepsal 1.0.0'), a build past
# it or without one sorts between releases (packaging/deb/version.sh).
# DEB_MAINTAINER names who built it; DEB_COMPRESS is dpkg-deb's compressor.
DIST              ?= dist
PKG_ARCHES        ?= amd64 arm64
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
DEB_VERSION       ?= $(shell packaging/deb/version.sh '$(VERSION)' '$(SOURCE_DATE_EPOCH)')-1
DEB_MAINTAINER    ?= pepsal maintainers <maintainers@pepsal.invalid>
DEB_COMPRESS      ?= xz
package: check-go
	@command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb is needed (Debian: apt-get install dpkg)" >&2; exit 1; }
	rm -rf $(DIST)/build
	$(GO) build -tags pepsal_gendocs -ldflags "$(LDFLAGS)" -o $(DIST)/build/pepsal-gendocs ./cmd/pepsal
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(DIST)/build/pepsal-gendocs gen-docs $(DIST)/build/docs
	@set -e; for arch in $(PKG_ARCHES); do \
		echo "pepsal $(VERSION) for $$arch"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS) -s -w" -o $(DIST)/build/$$arch/pepsal ./cmd/pepsal; \
		SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) DEB_MAINTAINER='$(DEB_MAINTAINER)' GIT_VERSION='$(VERSION)' DEB_COMPRESS=$(DEB_COMPRESS) \
			packaging/deb/build.sh $$arch $(DIST)/build/$$arch/pepsal $(DIST)/build/docs '$(DEB_VERSION)' $(DIST); \
	done

clean:
	rm -rf bin dist
