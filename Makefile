# labkit: `make lab` to explore, `make test` to check everything. See README.md.

# Debian/Ubuntu packages `make setup` installs when missing (through apt-get).
# graphviz: the `dot` program for diagrams; chromium: the browser test (Playwright drives
# it; it never downloads a browser of its own); chromium-driver: chromedriver, for
# WebDriver clients; fonts-dejavu-core: fonts for both. qemu-system-x86 and qemu-utils:
# the qemu driver's real guests; busybox-static, dropbear-bin, cpio and kmod: what
# `labkit image build` packs into the tiny guest (setup runs it; the kernel comes from
# Debian's linux-image-cloud-amd64); openssh-client: ssh into a guest from a terminal.
SYSTEM_PACKAGES := python3-venv graphviz chromium chromium-driver fonts-dejavu-core qemu-system-x86 qemu-utils busybox-static dropbear-bin cpio kmod openssh-client

VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# The venv first on PATH, so `labkit`, `jupyter` and `openstack` (also in JupyterLab's
# terminals) are the project's own.
RUN    := export PATH="$(BIN):$$PATH";

SHELL := /bin/bash

.PHONY: setup lab test lint pytest browser nbval bench clean distclean

# Sub-makes of `make test` pass SKIP_SETUP=1: setup ran once already.
setup:
ifneq ($(SKIP_SETUP),1)
	@SYSTEM_PACKAGES="$(SYSTEM_PACKAGES)" VENV="$(VENV)" bash scripts/setup.sh
endif

# Start the embedded cloud (it keeps running after JupyterLab stops: `labkit cloud down`),
# then JupyterLab on the notebooks. Its terminals get OS_CLIENT_CONFIG_FILE and OS_CLOUD,
# so `openstack token issue` works there. Their shell is named outright: otherwise, when
# stdout is no terminal, JupyterLab starts a login shell whose /etc/profile resets PATH
# and loses the venv's `openstack`. With OS_CLOUD naming a cloud of your own
# (clouds.yaml), the notebooks use that one and no embedded cloud starts.
lab: setup
	@$(RUN) set -e; \
	case "$${OS_CLOUD:-labkit}" in \
	labkit|labkit-admin) cloud="$${OS_CLOUD:-labkit}"; labkit cloud up; \
		eval "$$(labkit cloud env)"; export OS_CLOUD="$$cloud" ;; \
	*) echo "Using your cloud OS_CLOUD=$$OS_CLOUD (unset OS_CLOUD for the embedded one)" ;; \
	esac; \
	echo "JupyterLab starts below: open the http://127.0.0.1:.../lab?token=... URL it prints."; \
	echo "Stop it with Ctrl-C; stop the cloud with: $(VENV)/bin/labkit cloud down"; \
	exec jupyter lab $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) --ServerApp.ip=127.0.0.1 \
		--ServerApp.terminado_settings=shell_command="$${SHELL:-/bin/sh}" notebooks/

# Every step runs even when one before it failed; any failure fails `make test`.
test: setup
	@failed=""; \
	$(MAKE) --no-print-directory SKIP_SETUP=1 lint   || failed="$$failed lint"; \
	$(MAKE) --no-print-directory SKIP_SETUP=1 pytest || failed="$$failed pytest"; \
	$(MAKE) --no-print-directory SKIP_SETUP=1 nbval  || failed="$$failed nbval"; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed"; exit 1; fi; \
	echo "make test: all passed (lint, pytest, nbval)"

# --no-cache: ruff's cache keeps an import-sorting verdict after a new module (a
# conftest.py, say) changes what counts as first-party; CI's fresh clone has no cache.
lint: setup
	@echo "==> ruff check labkit tests bench scripts"
	@$(RUN) ruff check --no-cache labkit tests bench scripts

# All of tests/, the browser and real-guest tests included (LABKIT_REQUIRE_BROWSER and
# LABKIT_REQUIRE_QEMU: fail, not skip, when Chromium, qemu or the guest image is missing).
pytest: setup
	@echo "==> pytest tests"
	@$(RUN) LABKIT_REQUIRE_BROWSER=1 LABKIT_REQUIRE_QEMU=1 pytest tests

browser: setup
	@echo "==> pytest -m browser tests"
	@$(RUN) LABKIT_REQUIRE_BROWSER=1 pytest -m browser tests

# Each notebook against its own fresh deterministic cloud (outputs compared), then once
# more with LABKIT_FOREIGN=1 (must run without errors).
nbval: setup
	@$(RUN) bash scripts/nbval.sh

bench: setup
	@$(RUN) python bench/bench.py

# What the build and the tests made; `distclean` also removes the venv.
clean:
	rm -rf build artifacts .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
