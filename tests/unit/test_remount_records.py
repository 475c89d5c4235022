"""The state dir's records: devices recorded as ours, and children an earlier run left stuck."""

from __future__ import annotations

import os
import subprocess
import time

from lxcfs_guard import devices
from lxcfs_guard.remount import stuck


def test_devices_are_recorded_once_listed_and_forgotten(tmp_path) -> None:
    a, b = os.makedev(0, 52), os.makedev(0, 53)
    devices.record(str(tmp_path), a, "/var/lib/lxcfs")
    devices.record(str(tmp_path), a, "/elsewhere")  # idempotent: the first record stays
    devices.record(str(tmp_path), b, "/var/lib/lxcfs")
    (tmp_path / "devices" / "junk").write_text("x")
    got = devices.recorded(str(tmp_path))
    assert set(got) == {a, b} and all(abs(t - time.time()) < 60 for t in got.values())
    assert oct((tmp_path / "devices").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "devices" / "0:52").stat().st_mode & 0o777) == "0o600"
    devices.forget(str(tmp_path), {a})
    assert set(devices.recorded(str(tmp_path))) == {b}
    assert devices.recorded(str(tmp_path / "none")) == {}


def test_a_stuck_record_lasts_as_long_as_its_process(tmp_path) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        stuck.record(str(tmp_path), {stuck.ns_key(4026532001): proc.pid, stuck.dev_key(os.makedev(0, 60)): 999999999})
        assert stuck.active(str(tmp_path)) == {"mntns-4026532001": proc.pid}  # the pid that never was: dropped
    finally:
        proc.kill()
        proc.wait()
    assert stuck.active(str(tmp_path)) == {}
    assert os.listdir(tmp_path / "stuck") == []
