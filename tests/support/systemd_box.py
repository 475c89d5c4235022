"""A real systemd 252, booted as PID 1 of a throw-away overlay root in its own pid, mount, cgroup, network,
UTS and IPC namespaces (design.md §7). Never on the real root: booting systemd there empties /tmp and
litters the host's cgroup hierarchies.

    with systemd_box() as box:
        box.run("make", "-C", CHECKOUT, "install")
        box.systemctl("start", "lxcfs-guard")
        box.show("lxcfs-guard", "NRestarts")  -> "0"

How it is built, and why each step:
- a fresh cgroup `sdbox.<uuid>` under our own cgroup in *every* mounted hierarchy, entered before the
  namespaces are made, so the cgroup namespace is rooted there and everything systemd creates stays inside;
- `unshare --pid --fork --mount --cgroup --net --uts --ipc`: systemd sets the hostname, brings up
  networking and owns PID 1 only in its own namespaces;
- / is made rprivate; a tmpfs carries the overlay's upper and work dirs (lowerdir=/), so the box writes
  nothing to the host's root filesystem; fresh proc (with /proc/sys read-only: systemd-sysctl must not
  tune the host's kernel) and fresh read-only sysfs (systemd mounts its own cgroupfs under it, which is
  writable and namespaced); a minimal /dev on tmpfs (null, zero, full, random, urandom, tty, fuse, a new
  devpts) instead of the host's devtmpfs; the project checkout is bind-mounted so `make install` links the
  real virtualenv;
- units that would fight the tests or touch shared things (the host's lxcfs.service on /var/lib/lxcfs,
  postgresql, timesyncd, gettys) are masked in the overlay, and `container=` tells systemd it is not on
  bare metal (no udev);
- pivot_root into it, detach the old root, exec /lib/systemd/systemd --system.
Stopped by SIGKILL to its pid (SIGTERM makes systemd re-execute): the kernel then kills every process of
the pid namespace, the mount namespace goes with them, and the sdbox cgroups are removed depth-first.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lxcfs_guard.kernel import procfs
from lxcfs_guard.testing.procs import wait_for

CGROUP_ROOT = "/sys/fs/cgroup"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASKED_UNITS = (
    "lxcfs.service",
    # the real-client tests install docker.io and lxc: their daemons must not boot in every box
    "docker.service",
    "docker.socket",
    "containerd.service",
    "lxc.service",
    "lxc-net.service",
    "lxc-monitord.service",
    "postgresql.service",
    "postgresql@.service",
    "systemd-timesyncd.service",
    "e2scrub_reap.service",
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "man-db.timer",
    "podman.service",
    "podman.socket",
    "podman-auto-update.service",
    "podman-auto-update.timer",
    "podman-restart.service",
)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "fuse")

_BOOT_SCRIPT = r"""
set -eu
box="$1"; shift
mount --make-rprivate /
mount -t tmpfs -o size=1g,mode=0755 sdbox "$box"
mkdir "$box/upper" "$box/work" "$box/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$box/upper,workdir=$box/work" "$box/root"
r="$box/root"
mount -t proc proc "$r/proc"
mount --bind "$r/proc/sys" "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs -o ro sysfs "$r/sys"
mount -t tmpfs -o mode=0755,size=16m sdbox-dev "$r/dev"
for d in $DEVICES; do
  if [ -e "/dev/$d" ]; then touch "$r/dev/$d"; mount --bind "/dev/$d" "$r/dev/$d"; fi
done
touch "$r/dev/console"; mount --bind "$CONSOLE" "$r/dev/console"
mkdir -p "$r/dev/pts" "$r/dev/shm" "$r/dev/net"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mount -t tmpfs -o mode=1777 shm "$r/dev/shm"
ln -s /proc/self/fd "$r/dev/fd"
for b in "$@"; do mkdir -p "$r$b"; mount --rbind "$b" "$r$b"; done
mkdir -p "$r/etc/systemd/system"
for u in $MASKED; do ln -sf /dev/null "$r/etc/systemd/system/$u"; done
ln -sf /lib/systemd/system/multi-user.target "$r/etc/systemd/system/default.target"
mkdir -p "$r/.oldroot"
cd "$r"
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot || true
exec env -i container=lxcfs-guard-sdbox PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /lib/systemd/systemd --system --log-target=journal --log-level=info
"""


def _own_cgroups() -> dict[str, str]:
    """hierarchy directory -> our cgroup path in it, for every mounted hierarchy (v1 controllers, named
    hierarchies such as name=systemd, and the v2 one)."""
    by_key: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            by_key[ctrls] = path
    out: dict[str, str] = {}
    for m in procfs.read_mountinfo("self"):
        if m.fstype == "cgroup2":
            out[m.mount_point] = by_key.get("", "/")
        elif m.fstype == "cgroup":
            opt = set(m.super_options.split(","))
            for key, path in by_key.items():
                if key and set(key.split(",")) <= opt:
                    out[m.mount_point] = path
    return out


def _inherit_cpuset(path: str) -> None:
    if os.path.exists(os.path.join(path, "cpuset.cpus")):  # a new v1 cpuset is empty: inherit
        parent = os.path.dirname(path)
        for fname in ("cpuset.cpus", "cpuset.mems"):
            with open(os.path.join(parent, fname)) as src, open(os.path.join(path, fname), "w") as dst:
                dst.write(src.read().strip())


def _make_cgroups(name: str) -> list[str]:
    made = []
    for hier, own in _own_cgroups().items():
        path = os.path.join(hier, own.lstrip("/"), name)
        os.makedirs(path)
        made.append(path)
        _inherit_cpuset(path)
    return made


def _procs(path: str) -> list[int]:
    pids: list[int] = []
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids += [int(x) for x in f.read().split()]
    return pids


def _fuse_devs(pids: Sequence[int]) -> set[int]:
    """Devices of the FUSE mounts the box's processes see (all of them the box's own: its root is a fresh
    overlay, the host's FUSE mounts are not in it)."""
    devs: set[int] = set()
    seen: set[int] = set()
    for pid in pids:
        with contextlib.suppress(OSError, procfs.ProcessGone):
            ns = procfs.ns_inode(pid)
            if ns in seen:
                continue
            seen.add(ns)
            devs.update(m.dev for m in procfs.read_mountinfo(pid) if m.fstype.startswith("fuse."))
    return devs


def _abort_fuse(devs: set[int]) -> None:
    from lxcfs_guard.watchdog import fusectl

    was = fusectl.is_mounted()
    for dev in devs:
        fusectl.abort(dev)
    if not was and fusectl.is_mounted():
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["umount", "-l", fusectl.FUSECTL_DIR], check=False, capture_output=True, timeout=10)


def _remove_tree(path: str, timeout: float = 30.0) -> None:
    """rmdir depth-first, walking again each round (a cgroup whose last process just died may stay busy
    for a moment); processes still inside are the box's own and are SIGKILLed."""
    deadline = time.monotonic() + timeout
    while os.path.isdir(path):
        for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda t: -t[0].count("/")):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(dirpath)
        if not os.path.isdir(path):
            return
        left = _procs(path)
        if time.monotonic() > deadline:
            states = {}
            for pid in left:
                with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                    states[pid] = f.read().split(") ", 1)[1][:1]
            raise OSError(f"cannot remove {path}: processes {states} (pid: state) still inside")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


@dataclass
class BoxCgroup:
    name: str  # its path inside the box is /<name>
    paths: list[str]  # host paths, one per v1 hierarchy

    def add(self, pid: int) -> None:
        for path in self.paths:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(pid))

    def write(self, filename: str, value: str) -> None:
        for path in self.paths:
            if os.path.exists(os.path.join(path, filename)):
                with open(os.path.join(path, filename), "w") as f:
                    f.write(value)


@dataclass
class SystemdBox:
    pid: int  # host pid of the box's systemd (PID 1 inside)
    name: str
    cgroups: list[str] = field(default_factory=list)
    console: str = ""  # file that receives the box's /dev/console (systemd's own messages)

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the box (all of its namespaces, its root)."""
        cmd = ["nsenter", "-a", "-t", str(self.pid), "--wd=/", *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in box: {shlex.join(argv)} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-c", script, check=check, timeout=timeout)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "-P", prop, unit).stdout.strip()

    def host_pid(self, box_pid: int) -> int:
        """Translate a pid as seen inside the box to the host's pid (NSpid in /proc/PID/status)."""
        for pid in _procs(self.cgroups[0]) if self.cgroups else []:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = [int(x) for x in line.split()[1:]]
                        if len(ids) > 1 and ids[-1] == box_pid:
                            return pid
        raise LookupError(f"no process {box_pid} in the box")

    @contextlib.contextmanager
    def cgroup(self, memory: int | None = None) -> Iterator[BoxCgroup]:
        """A cgroup inside the box (under its cgroup-namespace root, in every v1 controller hierarchy), with
        an optional memory limit; processes left in it are killed (they are the box's) and it is removed."""
        name = f"lxcfs-guard-test-{uuid.uuid4().hex[:10]}"
        paths = []
        try:
            for box_root in self.cgroups:
                named = box_root.startswith(f"{CGROUP_ROOT}/systemd/")  # systemd's own hierarchy
                if named or not os.path.exists(os.path.join(box_root, "tasks")):  # (and skip cgroup2)
                    continue
                path = os.path.join(box_root, name)
                os.makedirs(path)
                paths.append(path)
                _inherit_cpuset(path)
            cg = BoxCgroup(name, paths)
            if memory is not None:
                cg.write("memory.limit_in_bytes", str(memory))
            yield cg
        finally:
            for path in paths:
                _remove_tree(path)

    def journal(self, unit: str, lines: int = 80) -> str:
        return self.run("journalctl", "--no-pager", "-u", unit, "-n", str(lines), check=False).stdout

    def wait_running(self, timeout: float = 60.0) -> str:
        state = ""

        def settled() -> bool:
            nonlocal state
            state = self.systemctl("is-system-running", check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_for(settled, timeout=timeout, interval=0.2, what="systemd in the box to finish booting")
        return state


@contextlib.contextmanager
def systemd_box(binds: Sequence[str] = (CHECKOUT,), boot_timeout: float = 90.0) -> Iterator[SystemdBox]:
    name = f"sdbox.{uuid.uuid4().hex[:10]}"
    workdir = tempfile.mkdtemp(prefix=f"{name}-")
    cgroups = _make_cgroups(name)
    launcher: subprocess.Popen[bytes] | None = None
    box: SystemdBox | None = None
    console = f"{workdir}.console"  # beside, not in, workdir: the box mounts its tmpfs over workdir
    log = open(console, "wb")  # noqa: SIM115 - closed in finally
    try:
        join = " ".join(f"echo $$ > {shlex.quote(os.path.join(c, 'cgroup.procs'))};" for c in cgroups)
        script = (
            f"{join} exec unshare --pid --fork --mount --cgroup --net --uts --ipc --propagation private "
            f"/bin/sh -c {shlex.quote(_BOOT_SCRIPT)} sdbox {shlex.quote(workdir)} "
            + " ".join(shlex.quote(b) for b in binds)
        )
        env = dict(os.environ, DEVICES=" ".join(DEVICES), MASKED=" ".join(MASKED_UNITS), CONSOLE=console)
        launcher = subprocess.Popen(["/bin/sh", "-c", script], stdout=log, stderr=subprocess.STDOUT, env=env)

        def child() -> int | None:
            with contextlib.suppress(OSError), open(f"/proc/{launcher.pid}/task/{launcher.pid}/children") as f:
                kids = f.read().split()
                return int(kids[0]) if kids else None
            return None

        wait_for(lambda: child() is not None or launcher.poll() is not None, timeout=10, what="unshare's child")
        pid = child()
        if pid is None:
            raise RuntimeError(f"the box did not start:\n{Path(log.name).read_text()}")
        box = SystemdBox(pid=pid, name=name, cgroups=cgroups, console=console)

        def systemd_is_pid1() -> bool:
            with contextlib.suppress(OSError):
                return os.readlink(f"/proc/{pid}/exe").endswith("/systemd")
            if launcher.poll() is not None:
                raise RuntimeError(f"the box died while booting:\n{Path(log.name).read_text()}")
            return False

        wait_for(systemd_is_pid1, timeout=15, what="systemd to become the box's PID 1")
        box.wait_running(boot_timeout)
        yield box
    finally:
        fuse_devs = _fuse_devs(_procs(cgroups[0])) if cgroups else set()
        if box is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(box.pid, signal.SIGKILL)
        if launcher is not None:
            try:
                launcher.wait(5)
            except subprocess.TimeoutExpired:
                # A process of the box stuck in the kernel on one of the box's FUSE connections (a flush at
                # exit on a connection whose daemon was stopped) keeps the pid namespace from dying: end
                # those connections, they are all the box's own.
                _abort_fuse(fuse_devs)
                try:
                    launcher.wait(15)
                except subprocess.TimeoutExpired:
                    launcher.kill()
                    launcher.wait(5)
        log.close()
        for path in cgroups:
            _remove_tree(path)
        with contextlib.suppress(OSError):
            os.unlink(console)
        with contextlib.suppress(OSError):
            os.rmdir(workdir)
