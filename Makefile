# pibake's everyday targets. `make test` is what CI runs (through .ci/run).

CARGO    ?= cargo
FIXTURES := target/fixtures
RELEASES := bullseye bookworm trixie gpt

.PHONY: build deps test e2e demo bench fixtures lint fmt clean-fixtures fuzz fuzz-seeds

build:
	$(CARGO) build --release

# The Debian packages the fixtures and tests use: installed when missing (as root), else the
# exact apt-get command is printed. `demo`, `test` and CI all go through it.
deps:
	@bash tests/deps.sh

test: deps
	$(CARGO) test --lib --bins --tests

# The boot test (issue 15): a master baked by pibake boots in qemu with a worker and an
# upstream, and must serve, route, masquerade, keep the world out and survive a reboot.
# Needs root; fixtures are cached in target/e2e/fixtures. E2E_SHAPES picks the fixtures. It uses
# the dev build `make test` has just made (optimised, see Cargo.toml), not a second, release one;
# E2E_PIBAKE=target/release/pibake tests an existing release build instead.
E2E_SHAPES ?= bookworm
E2E_PIBAKE ?= target/debug/pibake
e2e:
	@bash tests/deps.sh e2e
	@if [ "$(E2E_PIBAKE)" = target/debug/pibake ]; then $(CARGO) build --quiet; fi
	@E2E_PIBAKE=$(E2E_PIBAKE) bash tests/e2e/e2e.sh $(E2E_SHAPES)

# A bounded run of every fuzz target (issue 16): FUZZ_SECONDS each, FUZZ_TARGETS to pick some.
# Needs cargo-fuzz (installed when missing) and nightly's -Z flags (see fuzz/run.sh). The
# committed corpus and regressions are replayed on stable by `make test` already.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?=
fuzz:
	@FUZZ_SECONDS=$(FUZZ_SECONDS) bash fuzz/run.sh $(FUZZ_TARGETS)

# Regenerate fuzz/corpus/ from the fixtures and small files made with the real tools.
fuzz-seeds: fixtures
	$(CARGO) build --quiet
	python3 fuzz/seeds.py

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

fmt:
	$(CARGO) fmt --all

# Raspberry Pi OS-shaped images for tests and the demo; FULL=1 adds the ~3 GB benchmark image.
# An image is stale when any part of the generator (build.sh, the gentree package) is newer.
GENERATOR = $(shell ls -t tests/fixtures/build.sh tests/fixtures/gentree/*.py | head -n 1)
fixtures: deps
	@mkdir -p $(FIXTURES)
	@for r in $(RELEASES); do \
	  if [ ! $(FIXTURES)/$$r.img -nt $(GENERATOR) ]; then \
	    bash tests/fixtures/build.sh $$r $(FIXTURES) || exit 1; \
	  fi; \
	done
ifeq ($(FULL),1)
	@if [ ! $(FIXTURES)/full/bookworm-full.img.xz -nt $(GENERATOR) ]; then \
	  FULL=1 bash tests/fixtures/build.sh bookworm $(FIXTURES); \
	fi
endif

# The main job on the built-in demo image: bake a cluster master from the bookworm fixture with
# the example recipe, then look at the result.
DEMO_OUT := target/demo/master.img
demo: fixtures
	@mkdir -p target/demo
	$(CARGO) build --release --quiet
	./target/release/pibake plan examples/master.toml
	SOURCE_DATE_EPOCH=1735689600 ./target/release/pibake build examples/master.toml -o $(DEMO_OUT)
	./target/release/pibake inspect $(DEMO_OUT)
	./target/release/pibake cat $(DEMO_OUT) root:/etc/nftables.conf

bench:
	@$(MAKE) --no-print-directory fixtures FULL=1
	$(CARGO) bench

clean-fixtures:
	rm -rf $(FIXTURES)
