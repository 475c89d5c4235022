# lxcfs-guard: `make demo` runs it, `make test` tests it. Both install what they need (Debian 12, as root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := fuse3 libfuse3-dev pkg-config libsystemd-dev runc podman busybox-static lxcfs util-linux
V2_APT_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static meson ninja-build gcc python3-jinja2 uuid-runtime
PYTEST_ARGS ?=
PREFIX ?= /usr/local
UNITDIR ?= /etc/systemd/system
HOOKSDIR ?= /etc/containers/oci/hooks.d

.PHONY: setup apt test test-unit test-v2 demo bench install uninstall install-oci-hook uninstall-oci-hook clean

setup: apt $(VENV)/.installed

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat  # a plain path .pth: every lxcfs-guard start skips the ~8 ms import hook of a strict editable install
	touch $@

test: setup
	$(PY) -m pytest -m "not v2" $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-v2: setup
	@missing=$$(for p in $(V2_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(PY) -m tests.vm.run $(PYTEST_ARGS)

demo: setup
	$(PY) -m lxcfs_guard.demo

bench: setup
	$(PY) bench/read_rate.py
	$(PY) bench/remount.py
	$(PY) bench/recovery.py

install: setup
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)/etc/tmpfiles.d
	ln -sf $(CURDIR)/$(VENV)/bin/lxcfs-guard $(DESTDIR)$(PREFIX)/bin/lxcfs-guard
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#g' units/lxcfs-guard.service > $(DESTDIR)$(UNITDIR)/lxcfs-guard.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/lxcfs-guard.service
	install -m 0644 units/lxcfs-guard.tmpfiles $(DESTDIR)/etc/tmpfiles.d/lxcfs-guard.conf
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemd-tmpfiles --create /etc/tmpfiles.d/lxcfs-guard.conf; systemctl daemon-reload; \
	  echo "installed: systemctl enable --now lxcfs-guard"; fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl disable --now lxcfs-guard.service || true; fi
	rm -f $(DESTDIR)$(PREFIX)/bin/lxcfs-guard $(DESTDIR)$(UNITDIR)/lxcfs-guard.service $(DESTDIR)/etc/tmpfiles.d/lxcfs-guard.conf
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# podman/CRI-O: every container gets the hook (`always`); for opt-in by annotation install
# deploy/podman/lxcfs-guard-opt-in.json instead (HOOK_JSON=deploy/podman/lxcfs-guard-opt-in.json).
HOOK_JSON ?= units/hooks.d/lxcfs-guard.json
install-oci-hook:
	install -d $(DESTDIR)$(HOOKSDIR)
	sed 's#/usr/local/bin/#$(PREFIX)/bin/#g' $(HOOK_JSON) > $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json
	chmod 0644 $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json

uninstall-oci-hook:
	rm -f $(DESTDIR)$(HOOKSDIR)/lxcfs-guard.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
