# lxcfs-guard: `make demo` runs it, `make test` tests it. Both install what they need (Debian 12, as root).
# `make help` lists every target.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config libsystemd-dev runc podman busybox-static lxcfs util-linux lxc docker.io
V2_APT_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static meson ninja-build gcc python3-jinja2 uuid-runtime
PYTEST_ARGS ?=
PREFIX ?= /usr/local
UNITDIR ?= /etc/systemd/system
HOOKSDIR ?= /etc/containers/oci/hooks.d
# The Python of the installation: the distribution's, which apt keeps patched (not whatever is first in PATH).
PYTHON ?= /usr/bin/python3
# The installation: its own virtualenv, independent of this clone (delete the clone, it keeps running).
OPTDIR ?= /opt/lxcfs-guard
# Wheels of every dependency and of the build backend: `make install` installs from here with --no-index,
# so a node without network installs from a wheelhouse made elsewhere (`make wheelhouse`, then copy it).
WHEELHOUSE ?= build/wheelhouse
# What `make install` needs on the node (no compiler), and what building the wheelhouse needs on top.
INSTALL_APT_PACKAGES := fuse3 python3-venv
WHEELHOUSE_APT_PACKAGES := python3-venv python3-dev gcc pkg-config libfuse3-dev libsystemd-dev

# apt-get install what of $(1) is missing
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

.PHONY: help setup apt test test-unit test-v2 test-image lint demo bench wheelhouse install uninstall \
        install-oci-hook uninstall-oci-hook clean

help:  ## this list
	@grep -hE '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22

setup: apt $(VENV)/.installed  ## apt packages and the development virtualenv .venv (editable)

apt:  ## the apt packages the guard, its tests and the demo need
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[test,lint]'  # package-dir {"": "."}: a plain path .pth, no import hook at start-up
	touch $@

test: setup  ## the whole suite but the cgroup v2 VM tests (about 6 min here; the first run also builds an image, ~9 min)
	$(call apt_install,debootstrap)
	$(PY) -m pytest -m "not v2" $(PYTEST_ARGS)

test-unit: setup  ## the pure unit tests only (seconds)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-v2: setup  ## the cgroup v2 tests in a qemu VM (about 10-12 min under software emulation)
	@missing=$$(for p in $(V2_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(PY) -m tests.vm.run $(PYTEST_ARGS)

# The DaemonSet's image built with podman on a debootstrap base (no image registry needed; cached by content
# hash in podman's store: about 5 min the first time, seconds after) and run as the DaemonSet runs it.
# `make test` includes it; this runs it alone.
test-image: setup  ## build deploy/kubernetes/Containerfile and run it like the DaemonSet
	$(call apt_install,debootstrap)
	$(PY) -m pytest -m image tests/system/test_image.py $(PYTEST_ARGS)

demo: setup  ## a real runc container, the daemon killed, the container repaired
	$(PY) -m lxcfs_guard.demo

bench: setup  ## every benchmark (read rate, fleet N=200 and N=1000, remount, recovery), each beside its reference
	$(PY) bench/read_rate.py
	$(PY) bench/fleet.py --n 200
	$(PY) bench/fleet.py --n 1000
	$(PY) bench/remount.py
	$(PY) bench/recovery.py

lint: setup  ## ruff check, ruff format --check and mypy on lxcfs_guard/
	$(VENV)/bin/ruff check lxcfs_guard tests bench
	$(VENV)/bin/ruff format --check lxcfs_guard tests bench
	$(VENV)/bin/mypy lxcfs_guard

wheelhouse:  ## wheels of every dependency (network or pip's cache) for an offline `make install`
	$(call apt_install,$(WHEELHOUSE_APT_PACKAGES))
	test -x build/pip-venv/bin/pip || $(PYTHON) -m venv build/pip-venv
	build/pip-venv/bin/pip wheel -q --disable-pip-version-check -w $(WHEELHOUSE) 'setuptools>=77' .
	rm -f $(WHEELHOUSE)/lxcfs_guard-*.whl  # the guard's own wheel is built from the checkout at install time
	touch $(WHEELHOUSE)/.complete

$(WHEELHOUSE)/.complete:
	$(MAKE) wheelhouse WHEELHOUSE=$(WHEELHOUSE)

# pip without an index: the guard's wheel is built from this checkout (its build backend, setuptools, comes
# from the wheelhouse too), then installed with its dependencies into $(OPTDIR), replacing what was there.
PIP_OFFLINE = --disable-pip-version-check --no-index --find-links $(abspath $(WHEELHOUSE))
install: $(WHEELHOUSE)/.complete  ## a self-contained install: $(OPTDIR) virtualenv, the unit, tmpfiles
	$(call apt_install,$(INSTALL_APT_PACKAGES))
	rm -rf build/dist build/lib build/bdist.* lxcfs_guard.egg-info
	test -x $(DESTDIR)$(OPTDIR)/bin/pip || $(PYTHON) -m venv $(DESTDIR)$(OPTDIR)
	$(DESTDIR)$(OPTDIR)/bin/pip wheel -q $(PIP_OFFLINE) --no-deps -w build/dist .
	$(DESTDIR)$(OPTDIR)/bin/pip install -q $(PIP_OFFLINE) --force-reinstall build/dist/lxcfs_guard-*.whl
	rm -rf build/dist build/lib build/bdist.* lxcfs_guard.egg-info
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/tmpfiles.d
	ln -sfn $(OPTDIR)/bin/lxcfs-guard $(DESTDIR)$(PREFIX)/bin/lxcfs-guard
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#g' units/lxcfs-guard.service > $(DESTDIR)$(UNITDIR)/lxcfs-guard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/lxcfs-guard.service
	install -m 0644 units/lxcfs-guard.tmpfiles $(DESTDIR)/etc/tmpfiles.d/lxcfs-guard.conf
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemd-tmpfiles --create /etc/tmpfiles.d/lxcfs-guard.conf; systemctl daemon-reload; \
	  if systemctl -q is-active lxcfs-guard.service; then \
	    echo "installed: systemctl reload lxcfs-guard moves every container onto the new code"; \
	  else echo "installed: systemctl enable --now lxcfs-guard"; fi; fi

uninstall:  ## stop the service and remove everything `make install` and `make install-oci-hook` put in place
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now lxcfs-guard.service || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/lxcfs-guard $(DESTDIR)$(UNITDIR)/lxcfs-guard.service \
	  $(DESTDIR)/etc/tmpfiles.d/lxcfs-guard.conf $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json
	rm -rf $(DESTDIR)$(OPTDIR)
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# podman/CRI-O: every container gets the hook (`always`); for opt-in by annotation install
# deploy/podman/lxcfs-guard-opt-in.json instead (HOOK_JSON=deploy/podman/lxcfs-guard-opt-in.json).
HOOK_JSON ?= units/hooks.d/lxcfs-guard.json
install-oci-hook:  ## the OCI hook for podman/CRI-O (HOOK_JSON=... for opt-in by annotation)
	install -d $(DESTDIR)$(HOOKSDIR)
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#g' $(HOOK_JSON) > $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json
	chmod 0644 $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json

uninstall-oci-hook:  ## remove the OCI hook
	rm -f $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json

clean:  ## remove the virtualenv, the wheelhouse and build leftovers
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
