"""Mount-API and namespace syscalls through ctypes (Python 3.11 has no os.setns, and no wrapper for the
new mount API at all). Each wrapper raises OSError with the real errno, so callers can report it.

Calls glibc has no wrapper for go through syscall(2) with the number from SYSCALL_NUMBERS, an explicit
table per architecture: a number assumed on the wrong architecture would call another syscall with our
arguments, so an architecture missing from the table fails loudly (UnsupportedArchitecture) at the first
such call instead. Numbers from the kernel's arch/x86/entry/syscalls/syscall_64.tbl and
include/uapi/asm-generic/unistd.h (aarch64); 424 and up are the same on every architecture.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_UNIFIED = {"open_tree": 428, "move_mount": 429, "openat2": 437, "mount_setattr": 442}
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"setns": 308, "statx": 332, **_UNIFIED},
    "aarch64": {"setns": 268, "statx": 291, **_UNIFIED},
}


class UnsupportedArchitecture(OSError):
    """This machine's architecture is not in SYSCALL_NUMBERS."""


def syscall_number(name: str, machine: str | None = None) -> int:
    """The number of syscall `name` on `machine` (this one by default)."""
    machine = machine or os.uname().machine
    table = SYSCALL_NUMBERS.get(machine)
    if table is None:
        known = ", ".join(sorted(SYSCALL_NUMBERS))
        raise UnsupportedArchitecture(
            errno.ENOSYS,
            f"{name}: lxcfs-guard has no syscall numbers for architecture {machine!r} (it knows {known}); "
            "add them to SYSCALL_NUMBERS in lxcfs_guard/kernel/syscalls.py",
        )
    return table[name]


AT_FDCWD = -100  # "relative to the current directory" for the *at() calls

CLONE_FS = 0x00000200
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000

# open_tree
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_RECURSIVE = 0x8000
# move_mount
MOVE_MOUNT_F_SYMLINKS = 0x01
MOVE_MOUNT_F_AUTOMOUNTS = 0x02
MOVE_MOUNT_F_EMPTY_PATH = 0x04
MOVE_MOUNT_T_SYMLINKS = 0x10
MOVE_MOUNT_T_AUTOMOUNTS = 0x20
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOVE_MOUNT_BENEATH = 0x200
# mount_setattr
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
# umount2
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8
# mount(2)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20

ATTR_BY_OPTION = {
    "ro": MOUNT_ATTR_RDONLY,
    "nosuid": MOUNT_ATTR_NOSUID,
    "nodev": MOUNT_ATTR_NODEV,
    "noexec": MOUNT_ATTR_NOEXEC,
}


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling thread into the namespace `fd` refers to. For CLONE_NEWNS the process must be
    single-threaded (EINVAL otherwise): call it in a forked child."""
    _check(_libc.setns(fd, nstype), "setns")


def open_tree(path: str, flags: int = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC, dirfd: int = AT_FDCWD) -> int:
    """A detached clone of the mount at `path`, as an fd that `move_mount` can attach anywhere, even in
    another mount namespace. Consumed by the move that attaches it."""
    return _check(_syscall(syscall_number("open_tree"), dirfd, path.encode(), flags), "open_tree", path)


def move_mount(from_fd: int, to_fd: int, to_path: str = "", flags: int = 0, from_path: str = "") -> None:
    ret = _syscall(syscall_number("move_mount"), from_fd, from_path.encode(), to_fd, to_path.encode(), flags)
    _check(ret, "move_mount", to_path or None)


def mount_setattr(dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, propagation: int = 0) -> None:
    """Set/clear MOUNT_ATTR_* bits; `propagation` (MS_PRIVATE, MS_SLAVE, ...) changes the propagation type too:
    a clone of a shared mount is a peer of it until made private."""
    attr = _MountAttr(attr_set, attr_clr, propagation, 0)
    nr = syscall_number("mount_setattr")
    ret = _syscall(nr, dirfd, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    _check(ret, "mount_setattr", path or None)


def umount2(path: str, flags: int = 0) -> None:
    _check(_libc.umount2(path.encode(), flags), "umount2", path)


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    ret = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(ret, "mount", target)


def attrs_from_options(options: str) -> int:
    """MOUNT_ATTR_* bits for the per-mount options of a mountinfo line (ro,nosuid,nodev,...)."""
    bits = 0
    for opt in options.split(","):
        bits |= ATTR_BY_OPTION.get(opt, 0)
    return bits


# --- path resolution confined to a container's root, and cache-only stat (added for the remount engine) ---

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
AT_STATX_DONT_SYNC = 0x4000
ALL_MOUNT_ATTRS = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str | bytes, flags: int, resolve: int = 0) -> int:
    """openat2(2). With RESOLVE_IN_ROOT|RESOLVE_NO_SYMLINKS a path is resolved as if `dirfd` were `/` and
    no symlink (nor magic link) anywhere on it is followed: a container cannot redirect us out of its root."""
    how = _OpenHow(flags, 0, resolve)
    ret = _syscall(syscall_number("openat2"), dirfd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    return _check(ret, "openat2", os.fsdecode(path))


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_reserved", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """struct statx (include/uapi/linux/stat.h), 256 bytes; the kernel fills what it knows."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32),
        ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32),
        ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64),
        ("stx_dio_mem_align", ctypes.c_uint32),
        ("stx_dio_offset_align", ctypes.c_uint32),
        ("_spare3", ctypes.c_uint64 * 12),
    ]


assert ctypes.sizeof(Statx) == 256, "struct statx is 256 bytes in the kernel's ABI"


def statx(dirfd: int, path: str | bytes, flags: int, mask: int = 0) -> Statx:
    """statx(2); mask 0 asks for nothing beyond what every statx returns (mode, device)."""
    st = Statx()
    ret = _syscall(syscall_number("statx"), dirfd, os.fsencode(path), flags, mask, ctypes.byref(st))
    _check(ret, "statx", os.fsdecode(path) or None)
    return st


def statx_cached(fd: int) -> tuple[int, int]:
    """(st_mode, st_dev) of what `fd` (an O_PATH fd is fine) refers to, without asking the filesystem:
    AT_STATX_DONT_SYNC keeps FUSE from sending GETATTR, so this neither blocks on a hung daemon nor fails
    on a dead connection; st_dev comes from the superblock anyway."""
    st = statx(fd, b"", AT_EMPTY_PATH | AT_STATX_DONT_SYNC)
    return st.stx_mode, os.makedev(st.stx_dev_major, st.stx_dev_minor)


CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270


def fstatfs_type(fd: int) -> int:
    """f_type of the filesystem `fd` is on (fstatfs(2): Python has no wrapper that returns it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux; f_type comes first
    _check(_libc.fstatfs(fd, buf), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


def unshare(flags: int) -> None:
    """unshare(2) (Python 3.11 has no os.unshare)."""
    _check(_libc.unshare(flags), "unshare")


def move_mount_beneath_supported() -> bool:
    """Whether this kernel knows MOVE_MOUNT_BENEATH (6.5+): an unknown flag fails with EINVAL before the
    (deliberately bad) fds are looked at, a known one gets as far as EBADF."""
    ret = _syscall(
        syscall_number("move_mount"),
        -1,
        b"",
        -1,
        b"",
        MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH | MOVE_MOUNT_BENEATH,
    )
    return not (ret < 0 and ctypes.get_errno() == errno.EINVAL)


# nsfs ioctls (linux/nsfs.h, since 6.10): translate a pid between a pid namespace and ours.
NS_GET_PID_FROM_PIDNS = 0x8004B706
NS_GET_TGID_FROM_PIDNS = 0x8004B707


def pidns_init_pid(ns_fd: int) -> int:
    """Our pid of the process that is pid 1 in the pid namespace `ns_fd` (an fd of /proc/PID/ns/pid).
    OSError (ENOTTY/EINVAL on kernels before 6.10, ESRCH when the init is gone) tells the caller to fall
    back to scanning /proc."""
    return fcntl.ioctl(ns_fd, NS_GET_TGID_FROM_PIDNS, 1)
