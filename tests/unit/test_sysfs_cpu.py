"""The cpu directory's pure rules and its host-directory walker, against a fixture tree shaped like
/sys/devices/system/cpu (a real directory on disk: the walker's openat2 confinement is exercised for real)."""

from __future__ import annotations

import os
import stat

import pytest

from lxcfs_guard.fs.statfs import statfs_numbers
from lxcfs_guard.fs.sysfs_cpu import (
    INODE_BASE,
    CpuDir,
    cpu_name_map,
    cpu_number,
    decode_listing,
    encode_listing,
    link_stays_inside,
    may_read,
)


def test_cpu_number_only_for_cpu_directories() -> None:
    assert [cpu_number(n) for n in ("cpu0", "cpu17", "cpufreq", "cpuidle", "cpu01", "cpu", "xcpu1")] == [
        0,
        17,
        None,
        None,
        None,
        None,
        None,
    ]


def test_name_map_keeps_host_numbers_or_renumbers() -> None:
    host = ["cpu0", "cpu1", "cpu2", "cpu3", "cpufreq"]
    assert cpu_name_map(host, (2, 3), renumber=False) == {"cpu2": "cpu2", "cpu3": "cpu3"}
    assert cpu_name_map(host, (2, 3), renumber=True) == {"cpu0": "cpu2", "cpu1": "cpu3"}
    assert cpu_name_map(host, (1, 9), renumber=False) == {"cpu1": "cpu1"}  # no directory, not shown


def test_links_may_not_climb_out_of_the_mount() -> None:
    at = "sys/devices/system/cpu/cpu0/subsystem"
    assert link_stays_inside(at, "../../../../bus/cpu")
    assert link_stays_inside("sys/devices/system/cpu/cpu0/cpufreq", "../cpufreq/policy0")
    assert not link_stays_inside(at, "../../../../../../etc")
    assert link_stays_inside(at, "../../../../../etc")  # the mount root: still ours (ENOENT there)
    assert not link_stays_inside(at, "/etc/shadow")
    assert not link_stays_inside(at, "")


def test_read_permission_is_the_kernels_for_root_owned_files() -> None:
    assert may_read(0o400, 0, 0)
    assert not may_read(0o400, 100000, 100000)  # an unprivileged container's root
    assert may_read(0o444, 100000, 100000)
    assert may_read(0o440, 1000, 0) and not may_read(0o440, 1000, 1000)


def test_listing_round_trips_any_bytes_but_nul() -> None:
    pairs = [("cpu0", "cpu2"), ("caf\udce9", "caf\udce9"), ("a b\n", "a b\n")]
    assert decode_listing(encode_listing(pairs)) == pairs
    assert decode_listing(b"") == []


def test_statfs_numbers_are_nonzero_and_all_free() -> None:
    s = statfs_numbers([0, 4096, 8192, 1], 9)
    assert s["f_blocks"] == 4 and s["f_bfree"] == s["f_bavail"] == 4
    assert s["f_files"] == s["f_ffree"] == 9 and s["f_bsize"] == 4096
    assert statfs_numbers([], 0)["f_blocks"] == 1  # never a zero divisor


@pytest.fixture
def hostdir(tmp_path):
    root = tmp_path / "cpu"
    for n in range(4):
        (root / f"cpu{n}" / "topology").mkdir(parents=True)
        (root / f"cpu{n}" / "topology" / "core_id").write_text(f"{n}\n")
        os.symlink("../../../../bus/cpu", root / f"cpu{n}" / "subsystem")
    (root / "cpufreq").mkdir()
    for name, text in (
        ("online", "0-3\n"),
        ("possible", "0-3\n"),
        ("present", "0-3\n"),
        ("offline", "\n"),
        ("uevent", ""),
        ("kernel_max", "8191\n"),
    ):
        (root / name).write_text(text)
    (root / "secret").write_text("root only\n")
    os.chmod(root / "secret", 0o400)
    (tmp_path / "outside").write_text("must never be served\n")
    os.symlink("../../../../../../outside", root / "cpu0" / "escape")  # would climb above the mount
    os.symlink(str(tmp_path), root / "cpu1" / "abs")  # absolute: never served, never followed
    return root


def _dir(hostdir, mode="host", visible=(0, 1, 2, 3), renumber=False) -> CpuDir:

    def online(view) -> bytes:
        return ("0" if visible == (0,) else "0-3").encode() + b"\n"

    return CpuDir(lambda view: visible, online, mode, renumber=renumber, host_dir=str(hostdir))


def _names(d: CpuDir, parent=None, view=None) -> list[str]:
    listing = d.listing(parent, view)
    return [n for n, _ in d.entries(listing, parent is None)]


def test_host_mode_passes_everything_but_online_through(hostdir) -> None:
    d = _dir(hostdir)
    assert _names(d) == [
        "cpu0",
        "cpu1",
        "cpu2",
        "cpu3",
        "cpufreq",
        "kernel_max",
        "offline",
        "possible",
        "present",
        "secret",
        "uevent",
    ]  # `online` is the fixed tree's
    e = d.lookup(None, "cpu2")
    assert e is not None and stat.S_ISDIR(e.st.st_mode) and e.inode >= INODE_BASE and e.entry_timeout > 0
    core = d.lookup(d.lookup(e.inode, "topology").inode, "core_id")
    assert d.render(core.inode, object(), 1000, 1000) == b"2\n"
    assert d.render(d.lookup(None, "possible").inode, object(), 0, 0) == b"0-3\n"
    assert d.lookup(None, "online") is None and d.lookup(None, "..") is None and d.lookup(None, "a/b") is None


def test_container_mode_shows_the_callers_cpus_only(hostdir) -> None:
    d = _dir(hostdir, "container", visible=(0,))
    view = object()
    assert [n for n in _names(d, view=view) if n.startswith("cpu")] == ["cpu0", "cpufreq"]
    assert d.lookup(None, "cpu1", view) is None
    cpu0 = d.lookup(None, "cpu0", view)
    assert cpu0.entry_timeout == 0  # exists for some callers only: never cached by the kernel
    assert d.render(d.lookup(None, "possible", view).inode, view, 0, 0) == b"0\n"
    assert d.render(d.lookup(None, "present", view).inode, view, 0, 0) == b"0\n"
    assert d.render(d.lookup(None, "offline", view).inode, view, 0, 0) == b"\n"
    # an unresolved caller (view None) gets the host's directory
    assert d.lookup(None, "cpu3", None) is not None
    assert d.render(d.lookup(None, "possible").inode, None, 0, 0) == b"0-3\n"


def test_quota_view_renames_cpus_in_order(hostdir) -> None:
    d = _dir(hostdir, "container", visible=(2, 3), renumber=True)
    view = object()
    assert [n for n in _names(d, view=view) if n.startswith("cpu")] == ["cpu0", "cpu1", "cpufreq"]
    cpu1 = d.lookup(None, "cpu1", view)
    core = d.lookup(d.lookup(cpu1.inode, "topology").inode, "core_id")
    assert d.render(core.inode, view, 0, 0) == b"3\n"


def test_symlinks_are_shown_not_followed_and_never_lead_out(hostdir) -> None:
    d = _dir(hostdir)
    cpu0 = d.lookup(None, "cpu0")
    sub = d.lookup(cpu0.inode, "subsystem")
    assert stat.S_ISLNK(sub.st.st_mode) and d.readlink(sub.inode) == b"../../../../bus/cpu"
    assert d.lookup(cpu0.inode, "escape") is None
    assert "escape" not in _names(d, cpu0.inode)
    cpu1 = d.lookup(None, "cpu1")
    assert d.lookup(cpu1.inode, "abs") is None
    # a path through a symlink is refused by openat2 even if a name were forged
    with pytest.raises(OSError):
        d._open("cpu1/abs/outside", os.O_RDONLY)


def test_root_only_files_are_refused_to_other_uids(hostdir) -> None:
    d = _dir(hostdir)
    secret = d.lookup(None, "secret")
    assert d.render(secret.inode, None, 0, 0) == b"root only\n"
    with pytest.raises(PermissionError):
        d.render(secret.inode, None, 100000, 100000)
    assert not d.readable(secret.inode, 100000, 100000)
    with pytest.raises(IsADirectoryError):
        d.render(d.lookup(None, "cpu0").inode, None, 0, 0)


def test_another_process_finds_a_path_by_inode(hostdir) -> None:
    first = _dir(hostdir)
    core = first.lookup(first.lookup(first.lookup(None, "cpu3").inode, "topology").inode, "core_id")
    second = _dir(hostdir)  # a worker that never saw the lookups
    assert second.path_of(core.inode) == "cpu3/topology/core_id"
    assert second.render(core.inode, None, 0, 0) == b"3\n"
    assert second.path_of(INODE_BASE + 2**40) is None


def test_a_replaced_entry_is_not_served_under_its_old_inode(hostdir) -> None:
    d = _dir(hostdir)
    e = d.lookup(None, "kernel_max")
    with open(hostdir / "kernel_max") as held:  # the old inode stays alive: its number is not reused
        os.unlink(hostdir / "kernel_max")
        (hostdir / "kernel_max").write_text("x\n")
        assert d.getattr(e.inode) is None
        assert d.lookup(None, "kernel_max").inode != e.inode
        held.read()


def test_no_host_directory_means_only_the_fixed_files(tmp_path) -> None:
    d = CpuDir(lambda v: (0,), lambda v: b"0\n", host_dir=str(tmp_path / "none"))
    assert not d.enabled and d.lookup(None, "cpu0") is None and d.listing(None) == b""
    with pytest.raises(ValueError):
        CpuDir(lambda v: (0,), lambda v: b"0\n", mode="guest")
