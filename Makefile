# pibake's everyday targets. `make test` is what CI runs (through .ci/run).

CARGO    ?= cargo
FIXTURES := target/fixtures
RELEASES := bullseye bookworm trixie gpt

.PHONY: build test demo bench fixtures lint fmt clean-fixtures

build:
	$(CARGO) build --release

test:
	$(CARGO) test --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Raspberry Pi OS-shaped images for tests and the demo; FULL=1 adds the ~3 GB benchmark image.
fixtures:
	@mkdir -p $(FIXTURES)
	@for r in $(RELEASES); do \
	  if [ ! $(FIXTURES)/$$r.img -nt tests/fixtures/build.sh ]; then \
	    bash tests/fixtures/build.sh $$r $(FIXTURES) || exit 1; \
	  fi; \
	done
ifeq ($(FULL),1)
	@if [ ! $(FIXTURES)/full/bookworm-full.img.xz -nt tests/fixtures/build.sh ]; then \
	  FULL=1 bash tests/fixtures/build.sh bookworm $(FIXTURES); \
	fi
endif

# The main job on the built-in demo image: inspect the bookworm fixture.
demo: fixtures
	$(CARGO) run --release --quiet -- inspect $(FIXTURES)/bookworm.img
	$(CARGO) run --release --quiet -- cat $(FIXTURES)/bookworm.img root:/etc/os-release

bench:
	@$(MAKE) --no-print-directory fixtures FULL=1
	$(CARGO) bench

clean-fixtures:
	rm -rf $(FIXTURES)
