# SPDX-License-Identifier: MIT
# Build, install, test and benchmark flake-pilot. `make help` lists the targets.

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec/flake-pilot
DATADIR ?= $(PREFIX)/share
VM_FIXTURES ?= /var/cache/flake-pilot-vm
FUZZ_SECONDS ?= 30
DESTDIR ?=
CARGO   ?= cargo
BINS    := flake-ctl podman-pilot firecracker-pilot
# The agent runs inside arbitrary images (busybox has no libc), so it is linked statically.
TRIPLE  := $(shell rustc -vV | sed -n 's/^host: //p')
AGENT   := target/$(TRIPLE)/release/flake-agent
SCI     := target/$(TRIPLE)/release/sci

.PHONY: help build agent install uninstall deb deb-test setup vm-fixtures lint test ci demo bench bench-oci load fuzz fuzz-smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

build: agent ## release build of every binary
	$(CARGO) build --release --locked --workspace --bins

agent: ## the static agent of resume flakes and the static guest init sci
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --locked \
	    -p flake-agent -p sci --target $(TRIPLE)

install: build ## install the binaries side by side into $(DESTDIR)$(BINDIR)
	install -d $(DESTDIR)$(BINDIR)
	for b in $(BINS); do install -m 0755 target/release/$$b $(DESTDIR)$(BINDIR)/$$b; done
	install -d $(DESTDIR)$(LIBEXECDIR)
	install -m 0755 $(AGENT) $(DESTDIR)$(LIBEXECDIR)/flake-agent
	install -m 0755 $(SCI) $(DESTDIR)$(LIBEXECDIR)/sci
	install -d $(DESTDIR)$(DATADIR)/bash-completion/completions \
	    $(DESTDIR)$(DATADIR)/zsh/site-functions $(DESTDIR)$(DATADIR)/fish/vendor_completions.d
	target/release/flake-ctl completion bash \
	    > $(DESTDIR)$(DATADIR)/bash-completion/completions/flake-ctl
	target/release/flake-ctl completion zsh > $(DESTDIR)$(DATADIR)/zsh/site-functions/_flake-ctl
	target/release/flake-ctl completion fish \
	    > $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/flake-ctl.fish
	target/release/flake-ctl generate man $(DESTDIR)$(DATADIR)/man/man1
	for s in 1 5 8; do install -d $(DESTDIR)$(DATADIR)/man/man$$s; \
	    install -m 0644 man/*.$$s $(DESTDIR)$(DATADIR)/man/man$$s/; done
	install -d $(DESTDIR)$(DATADIR)/flake-pilot
	target/release/flake-ctl generate schema > $(DESTDIR)$(DATADIR)/flake-pilot/flake.schema.json

uninstall: ## remove the installed binaries
	for b in $(BINS); do rm -f $(DESTDIR)$(BINDIR)/$$b; done
	rm -f $(DESTDIR)$(LIBEXECDIR)/flake-agent $(DESTDIR)$(LIBEXECDIR)/sci
	rm -f $(DESTDIR)$(DATADIR)/bash-completion/completions/flake-ctl \
	    $(DESTDIR)$(DATADIR)/zsh/site-functions/_flake-ctl \
	    $(DESTDIR)$(DATADIR)/fish/vendor_completions.d/flake-ctl.fish \
	    $(DESTDIR)$(DATADIR)/man/man1/flake-ctl*.1 \
	    $(addprefix $(DESTDIR)$(DATADIR)/man/,man1/podman-pilot.1 man1/firecracker-pilot.1 \
	        man5/flakes.5 man8/sci.8) \
	    $(DESTDIR)$(DATADIR)/flake-pilot/flake.schema.json

deb: ## Debian package target/deb/flake-pilot_VERSION_ARCH.deb (dpkg-deb, no extra tools)
	bash scripts/deb.sh

deb-test: ## build the package, install, run a flake and purge it in a scratch root (root)
	FLAKE_TEST_REQUIRE_PODMAN=1 bash scripts/deb-test.sh

setup: ## install and configure podman and the test image on this host (root)
	bash scripts/setup-host.sh

vm-fixtures: ## Firecracker binary, guest kernel and rootfs for VM tests (cached in $(VM_FIXTURES))
	bash scripts/vm-fixtures.sh $(VM_FIXTURES)

lint: ## formatting, clippy and docs, all warnings fatal
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --workspace --no-deps

test: ## lint, then unit and integration tests against real podman
	$(MAKE) lint
	$(MAKE) agent
	$(CARGO) build --locked --workspace --bins
	rm -f target/test-skips.txt
	FLAKE_AGENT=$(CURDIR)/$(AGENT) FLAKE_SCI=$(CURDIR)/$(SCI) FLAKE_TEST_REQUIRE_PODMAN=1 \
	    FLAKE_VM_FIXTURES=$(VM_FIXTURES) FLAKE_TEST_SKIPS=$(CURDIR)/target/test-skips.txt \
	    $(CARGO) test --locked --workspace
	@# The QEMU VM suite again with every call over vsock (Firecracker's channel).
	FLAKE_QEMU_CHANNEL=vsock FLAKE_AGENT=$(CURDIR)/$(AGENT) FLAKE_SCI=$(CURDIR)/$(SCI) \
	    FLAKE_VM_FIXTURES=$(VM_FIXTURES) FLAKE_TEST_SKIPS=$(CURDIR)/target/test-skips.txt \
	    $(CARGO) test --locked -p flake-ctl --test vm_qemu
	@# cargo counts a test that returned early as passed: list the skips it cannot show.
	@if [ -s target/test-skips.txt ]; then \
	    echo "SKIPPED: $$(wc -l < target/test-skips.txt) test(s) could not run here:"; \
	    sort target/test-skips.txt | sed 's/^/  /'; \
	else echo "SKIPPED: none"; fi

ci: ## what CI runs: host and VM fixture set-up (with a rootless test user), all tests, the Debian package test, a short fuzz run
	ROOTLESS_USER=flaketest bash scripts/setup-host.sh
	bash scripts/vm-fixtures.sh $(VM_FIXTURES)
	FLAKE_TEST_REQUIRE_VM=1 $(MAKE) test
	$(MAKE) deb-test
	$(MAKE) fuzz-smoke

demo: setup install ## set up, install, register a flake on the local image and run it
	$(DESTDIR)$(BINDIR)/flake-ctl podman register --container localhost/busybox \
	    --app $(DESTDIR)$(BINDIR)/flake-hello --target /bin/echo --force
	$(DESTDIR)$(BINDIR)/flake-hello "hello from a container"

bench: build setup ## launch cost of flakes against the raw podman commands
	bash scripts/bench.sh
	bash scripts/bench-oci.sh

bench-oci: build setup ## OCI image to VM image (pull --oci) against podman pull + export
	bash scripts/bench-oci.sh

fuzz: ## run every fuzz target in fuzz/ for FUZZ_SECONDS (default 30) each (nightly, cargo-fuzz)
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

fuzz-smoke: ## a short fuzz run for CI: 5 seconds per target
	FUZZ_SECONDS=5 bash scripts/fuzz.sh

load: build setup ## concurrent and sequential launches under load; writes docs/load.md
	bash scripts/load.sh

clean: ## remove build output
	$(CARGO) clean
