"""The DaemonSet's image, built for real from deploy/kubernetes/Containerfile with podman, without an image
registry (this machine has none): the base is a Debian 12 root made by debootstrap from the Debian mirror
apt uses, imported with `podman import`. Both images are cached in podman's store under tags derived from
what they are made of, so a second run builds nothing:

- base:  localhost/lxcfs-guard-base:bookworm-<hash of the recipe>  (about 2 min the first time, 200 MB)
- guard: localhost/lxcfs-guard:test-<hash of Containerfile, pyproject.toml, README.md, lxcfs_guard/, base>

Why debootstrap and not `FROM scratch` plus the host's Python and venv: the result is the Debian root that
the Containerfile's `FROM debian:12-slim` means, so the Containerfile that is tested is the one operators
build, unchanged (only BASE is passed in); copying the host's interpreter would test another recipe and
drag in whatever shared libraries the host happens to have.

Builds run under an exclusive flock, so parallel sessions never build the same image twice at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

from tests.support.systemd_box import CHECKOUT

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_RECIPE = f"debootstrap --variant=minbase {SUITE} {MIRROR}"
CONTAINERFILE = os.path.join(CHECKOUT, "deploy", "kubernetes", "Containerfile")
LOCK = "/run/lxcfs-guard-image-build.lock"
# This host reaches PyPI through a TLS proxy whose CA only the host trusts (pip.conf names the bundle): the
# build's RUN steps get both, read-only, for the duration of the build; nothing of them is in the image.
# The bundle goes to a path of its own, never over the image's /etc/ssl/certs/ca-certificates.crt: the
# build installs ca-certificates (python3-venv needs it), whose postinst replaces that file and fails on a
# read-only bind ("Device or resource busy"). pip.conf is given a copy that names the new path.
HOST_PIP_CONF = "/etc/pip.conf"
BUILD_CA = "/etc/lxcfs-guard-build-ca.crt"


def build_volumes(work: str) -> list[str]:
    """podman build's -v arguments that lend the build this host's pip settings and CA bundle."""
    if not os.path.exists(HOST_PIP_CONF):
        return []
    with open(HOST_PIP_CONF) as f:
        conf = f.read()
    volumes = []
    for line in conf.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "cert" and os.path.exists(value.strip()):
            volumes += ["-v", f"{value.strip()}:{BUILD_CA}:ro"]
            conf = conf.replace(line, f"cert = {BUILD_CA}")
    copy = os.path.join(work, "pip.conf")
    with open(copy, "w") as f:
        f.write(conf)
    return volumes + ["-v", f"{copy}:{HOST_PIP_CONF}:ro"]


PODMAN_PARENT = "libpod_parent"


def _podman_cgroups() -> set[str]:
    root = "/sys/fs/cgroup"
    found = {os.path.join(root, h, PODMAN_PARENT) for h in os.listdir(root)} | {os.path.join(root, PODMAN_PARENT)}
    return {d for d in found if os.path.isdir(d)}


@contextlib.contextmanager
def no_podman_cgroups_left() -> Iterator[None]:
    """podman (cgroupfs manager) makes libpod_parent/conmon in every hierarchy and leaves them behind when its
    containers are gone. The empty ones this block caused are removed; any that were there before stay."""
    before = _podman_cgroups()
    try:
        yield
    finally:
        deadline = time.monotonic() + 10  # conmon leaves its cgroup a moment after `podman rm` returns
        while (left := _podman_cgroups() - before) and time.monotonic() < deadline:
            for top in left:
                for d, _, _ in os.walk(top, topdown=False):
                    with contextlib.suppress(OSError):  # busy (a process still in it): not ours to empty
                        os.rmdir(d)
            time.sleep(0.1)


def podman(*argv: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(["podman", *argv], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"podman {' '.join(argv)} -> {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def base_image() -> str:
    """A minimal Debian 12 root, as debian:12-slim would give it, made here and imported."""
    ref = f"localhost/lxcfs-guard-base:{SUITE}-{hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:12]}"
    with build_lock():
        if exists(ref):
            return ref
        work = tempfile.mkdtemp(prefix="lxcfs-guard-base-", dir="/var/tmp")
        try:
            root = os.path.join(work, "root")
            subprocess.run(
                ["debootstrap", "--variant=minbase", SUITE, root, MIRROR], check=True, capture_output=True, timeout=900
            )
            shutil.rmtree(os.path.join(root, "var", "cache", "apt", "archives"), ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                ["podman", "import", "-", ref], stdin=tar.stdout, capture_output=True, text=True, timeout=600
            )
            assert tar.stdout is not None
            tar.stdout.close()
            if tar.wait(60) != 0 or imported.returncode != 0:
                raise RuntimeError(f"podman import failed: {imported.stderr}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return ref


def _content_hash(base: str) -> str:
    """What the image is made of: the Containerfile, the files it copies, and the base."""
    h = hashlib.sha256(base.encode())
    paths = [CONTAINERFILE, os.path.join(CHECKOUT, "pyproject.toml"), os.path.join(CHECKOUT, "README.md")]
    for dirpath, dirs, files in os.walk(os.path.join(CHECKOUT, "lxcfs_guard")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        paths += [os.path.join(dirpath, f) for f in sorted(files) if not f.endswith(".pyc")]
    for path in paths:
        h.update(os.path.relpath(path, CHECKOUT).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def guard_image() -> str:
    """deploy/kubernetes/Containerfile built on the local base (apt and pip fetch from their registries)."""
    base = base_image()
    ref = f"localhost/lxcfs-guard:test-{_content_hash(base)}"
    with build_lock():
        if not exists(ref):
            work = tempfile.mkdtemp(prefix="lxcfs-guard-build-")
            try:
                podman(
                    "build",
                    "--network=host",
                    *build_volumes(work),
                    "--build-arg",
                    f"BASE={base}",
                    "-f",
                    CONTAINERFILE,
                    "-t",
                    ref,
                    CHECKOUT,
                    timeout=1200,
                )
            finally:
                shutil.rmtree(work, ignore_errors=True)
            _drop_older(ref)
    return ref


def _drop_older(ref: str) -> None:
    """Untag the images of older trees (each content change makes one, 380 MB); the build cache (the
    untagged stage layers) stays. An image a running container uses is refused by podman and kept."""
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/lxcfs-guard", check=False).stdout
    for old in listed.split():
        if old.startswith("localhost/lxcfs-guard:test-") and old != ref:
            podman("rmi", old, check=False)
