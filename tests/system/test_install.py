"""`make install` as an operator runs it, in a throw-away systemd root (tests/support/systemd_box.py): clone
the repository, install from the clone, delete the clone, and the service still starts and serves.

The box has no network: the install uses a wheelhouse made on the host beforehand (`make wheelhouse`), copied
into the clone and deleted with it, exactly as an offline node would be served. The checkout itself (and its
development .venv) is hidden under an empty tmpfs in the box once the clone is made, so nothing of it can be
what serves.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from lxcfs_guard.testing.procs import wait_for
from tests.support.systemd_box import CHECKOUT, SystemdBox, systemd_box

pytestmark = pytest.mark.systemd

UNIT = "lxcfs-guard.service"
MOUNTPOINT = "/var/lib/lxcfs"
CLONE = "/var/tmp/lxcfs-guard-clone"
OPT = "/opt/lxcfs-guard"


def healthy(box: SystemdBox) -> bool:
    p = box.run("lxcfs-guard", "status", "--json", check=False)
    return p.returncode == 0 and bool(json.loads(p.stdout or "{}").get("healthy"))


def clone(box: SystemdBox) -> None:
    # (from a known working directory: nsenter leaves git's cwd unresolvable, and its checkout needs one)
    box.sh(f"cd /var/tmp && git clone -q --no-hardlinks {CHECKOUT} {CLONE}", timeout=120)


def test_install_from_a_clone_then_delete_the_clone():
    subprocess.run(["make", "-C", CHECKOUT, "wheelhouse"], check=True, capture_output=True, timeout=900)
    with systemd_box() as box:
        clone(box)
        box.sh(f"mkdir {CLONE}/build && cp -a {CHECKOUT}/build/wheelhouse {CLONE}/build/")
        box.run("mount", "-t", "tmpfs", "-o", "size=1m", "hide-the-checkout", CHECKOUT)
        try:
            box.run("make", "-C", CLONE, "install", timeout=300)
        except AssertionError:
            print(box.run("ls", "-la", f"{CLONE}/build/wheelhouse", check=False).stdout)
            raise
        box.run("rm", "-rf", CLONE)

        assert box.run("readlink", "/usr/local/bin/lxcfs-guard").stdout.strip() == f"{OPT}/bin/lxcfs-guard"
        where = box.run(f"{OPT}/bin/python", "-c", "import lxcfs_guard; print(lxcfs_guard.__file__)").stdout
        assert where.startswith(f"{OPT}/lib/"), where  # a real install, not an editable link to a clone
        box.systemctl("start", UNIT, timeout=90)
        try:
            wait_for(lambda: healthy(box), 30, 0.2, "lxcfs-guard status to report a healthy daemon")
            assert box.run("lxcfs-guard", "status").returncode == 0
            assert box.run("head", "-1", f"{MOUNTPOINT}/proc/meminfo").stdout.startswith("MemTotal:")
            assert box.show(UNIT, "ActiveState") == "active"
            assert box.show(UNIT, "NRestarts") == "0"
        except BaseException:
            print(box.journal(UNIT, 200))
            raise

        # a new clone uninstalls it all
        box.run("umount", CHECKOUT)
        clone(box)
        box.run("make", "-C", CLONE, "uninstall", timeout=120)
        gone = (OPT, "/usr/local/bin/lxcfs-guard", f"/etc/systemd/system/{UNIT}", "/etc/tmpfiles.d/lxcfs-guard.conf")
        for path in gone:
            assert box.run("test", "-e", path, check=False).returncode != 0, path
        assert box.show(UNIT, "LoadState") == "not-found"
