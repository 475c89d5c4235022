"""Record what a real cgroup v2 kernel shows, as fixture data: `python -m tests.vm.dump_v2 [OUT]`.

Boots the test VM (tests/vm) and, inside it, builds a small hierarchy shaped like a container's
(`/lg-parent` with memory.max=64M, its child `/lg-parent/ct` with memory.swap.max=32M, cpuset.cpus=0 and
cpu.max="50000 100000"), runs a workload in `ct` that uses every counter the filesystem virtualizes (anon memory
pushed past the limit into swap, tmpfs pages, a mapped file, a CPU busy loop, O_DIRECT reads and writes on the
scratch disk /dev/vda), then copies every readable file of the root, the parent and `ct`, the host /proc files
the views start from, and what Debian's LXCFS 5.0.3 serves to a reader inside `ct`, into OUT
(default tests/fixtures/v2-real). Unit fixtures written from memory can be checked against this tree.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = "/sys/fs/cgroup"
PARENT = f"{ROOT}/lg-parent"
CT = f"{PARENT}/ct"
IDLE = f"{PARENT}/idle"  # no process, no I/O, but io.max set: its io.stat has a bare "MAJ:MIN " line
MiB = 1024 * 1024
LIMITS = {
    PARENT: {"memory.max": str(64 * MiB)},
    CT: {"memory.swap.max": str(32 * MiB), "cpuset.cpus": "0", "cpu.max": "50000 100000"},
}
PROC_FILES = (
    "/proc/meminfo", "/proc/stat", "/proc/diskstats", "/proc/cpuinfo", "/proc/uptime", "/proc/swaps",
    "/proc/loadavg", "/proc/partitions", "/proc/version", "/proc/pressure/cpu", "/proc/pressure/memory",
    "/proc/pressure/io", "/sys/devices/system/cpu/online",
)  # fmt: skip
LXCFS_FILES = (
    "proc/cpuinfo", "proc/diskstats", "proc/loadavg", "proc/meminfo", "proc/stat", "proc/swaps",
    "proc/uptime", "proc/slabinfo", "sys/devices/system/cpu/online",
)  # fmt: skip
MAX_FILE = 256 * 1024
README = """# Real cgroup v2 files (generated; do not edit by hand)

Recorded by `python -m tests.vm.dump_v2` (see tests/vm/dump_v2.py) in the test VM: Debian kernel {kernel},
qemu TCG, 2 vCPUs, 2 GiB, 64 MiB swap on /dev/vdb, cgroup2 mounted with nsdelegate, every controller enabled
in the root's subtree_control, no systemd.

- `cgroup/`: every readable file of the root cgroup; `cgroup/lg-parent/` (memory.max=64M, subtree_control
  +cpuset +cpu +io +memory +pids); `cgroup/lg-parent/ct/` (memory.swap.max=32M, cpuset.cpus=0,
  cpu.max="50000 100000", one process that pushed 80 MiB of anon memory past the limit into swap, wrote 2 MiB to
  /dev/shm, mapped a file, ran a 1 s CPU loop and did O_DIRECT I/O on /dev/vda: 1 MiB written, 512 KiB read).
  `cgroup/lg-parent/idle/`: no process and no I/O, but io.max set on /dev/vda, so its io.stat shows the
  device with no keys at all ("254:0 "). `_files.txt` in each lists every file with its mode, including the
  write-only ones.
- `host/`: the VM's own /proc files (the views' host input) at the same moment; `host/proc/PID/cgroup` is the
  workload's, `host/proc/self/mountinfo.cgroup2` the cgroup2 mount line.
- `lxcfs-5.0.3-in-ct/`: what Debian's LXCFS 5.0.3 (default options, run in its own non-root cgroup as systemd
  would) served to a reader inside `ct` right after.
- `setup.json`: the limits written and the workload's pid.
Values are one run's; formats, file presence and the relations between files are what to rely on.
"""


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _join_ct() -> None:
    _write(f"{CT}/cgroup.procs", str(os.getpid()))


def workload(ready_fd: int) -> None:
    """Runs inside `ct` (forked child); signals readiness on ready_fd, then sleeps until killed."""
    _join_ct()
    anon = [bytearray(MiB) for _ in range(80)]  # 80 MiB > the 64 MiB limit: the rest goes to swap
    for block in anon:
        block[::4096] = b"x" * len(block[::4096])
    with open("/dev/shm/lg-dump", "wb") as f:  # shmem / file pages
        f.write(b"s" * (2 * MiB))
    with open(sys.executable, "rb") as f:  # file_mapped
        mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        _ = sum(mapped[i] for i in range(0, len(mapped), 4096))
    start = time.process_time()
    while time.process_time() - start < 1.0:  # user time
        pass
    buf = mmap.mmap(-1, MiB)  # page-aligned, as O_DIRECT needs
    buf.write(b"d" * MiB)
    fd = os.open("/dev/vda", os.O_RDWR | os.O_DIRECT)
    try:
        os.write(fd, buf)
        os.lseek(fd, 0, os.SEEK_SET)
        os.readv(fd, [memoryview(buf)[: MiB // 2]])
    finally:
        os.close(fd)
    os.write(ready_fd, b"r")
    while True:
        time.sleep(60)


def dump_dir(src: str, dst: Path) -> None:
    """Copy every readable regular file of one cgroup directory; list all of them in _files.txt."""
    dst.mkdir(parents=True, exist_ok=True)
    listing = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if os.path.isdir(path):
            continue
        mode = oct(os.stat(path).st_mode & 0o777)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE)
        except OSError as e:
            listing.append(f"{name} {mode} unreadable: {errno.errorcode.get(e.errno, e.errno)}")
            continue
        (dst / name).write_bytes(data)
        listing.append(f"{name} {mode} {len(data)} bytes")
    (dst / "_files.txt").write_text("\n".join(listing) + "\n")


def dump_lxcfs(out: Path) -> None:
    """What LXCFS 5.0.3 serves to a reader inside `ct`, run as Debian's unit runs it: default options, in its own
    non-root cgroup like systemd's lxcfs.service (in the root cgroup it finds no memory.swap.max and turns swap
    virtualization off)."""
    mnt = "/tmp/lxcfs-dump"
    os.makedirs(mnt, exist_ok=True)
    service = f"{ROOT}/lxcfs.service"
    os.makedirs(service, exist_ok=True)
    proc = subprocess.Popen(
        ["lxcfs", "-f", "-p", "/run/lxcfs-dump.pid", mnt],
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: _write(f"{service}/cgroup.procs", str(os.getpid())),
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(f"{mnt}/proc/meminfo"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("lxcfs did not come up")
            time.sleep(0.1)
        dst = out / "lxcfs-5.0.3-in-ct"
        for rel in LXCFS_FILES:
            res = subprocess.run(["cat", f"{mnt}/{rel}"], capture_output=True, preexec_fn=_join_ct)
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(res.stdout if res.returncode == 0 else b"ERROR: " + res.stderr)
    finally:
        subprocess.run(["umount", "-l", mnt], check=False)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        os.rmdir(service)


def in_vm(out: Path) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    os.makedirs(CT)
    os.makedirs(IDLE)
    _write(f"{PARENT}/cgroup.subtree_control", "+cpuset +cpu +io +memory +pids")
    for path, files in LIMITS.items():
        for name, value in files.items():
            _write(f"{path}/{name}", value)
    scratch = os.stat("/dev/vda").st_rdev
    _write(f"{IDLE}/io.max", f"{os.major(scratch)}:{os.minor(scratch)} wbps=104857600")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            workload(w)
        finally:
            os._exit(1)
    os.close(w)
    try:
        if os.read(r, 1) != b"r":
            raise RuntimeError("workload failed")
        dump_dir(ROOT, out / "cgroup")
        dump_dir(PARENT, out / "cgroup" / "lg-parent")
        dump_dir(CT, out / "cgroup" / "lg-parent" / "ct")
        dump_dir(IDLE, out / "cgroup" / "lg-parent" / "idle")
        proc_out = out / "host"
        for path in PROC_FILES:
            target = proc_out / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Path(path).read_bytes())
        (proc_out / "proc/PID").mkdir(parents=True, exist_ok=True)
        (proc_out / "proc/self").mkdir(parents=True, exist_ok=True)
        (proc_out / "proc/PID/cgroup").write_bytes(Path(f"/proc/{pid}/cgroup").read_bytes())
        with open("/proc/self/mountinfo") as f:
            cg_lines = [line for line in f if " - cgroup2 " in line]
        (proc_out / "proc/self/mountinfo.cgroup2").write_text("".join(cg_lines))
        dump_lxcfs(out)
        (out / "README.md").write_text(README.format(kernel=os.uname().release))
        (out / "setup.json").write_text(
            json.dumps({"limits": LIMITS, "kernel": os.uname().release, "workload_pid": pid}, indent=1) + "\n"
        )
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for path in (CT, IDLE, PARENT):
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except OSError:
                    time.sleep(0.05)
        with_shm = Path("/dev/shm/lg-dump")
        with_shm.unlink(missing_ok=True)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--in-vm"]:
        return in_vm(Path(argv[1]))
    from tests.vm.run import REPO, job_spec, run_vm

    out = Path(argv[0]) if argv else REPO / "tests" / "fixtures" / "v2-real"

    def collect(share: Path) -> None:
        if (share / "v2-real").is_dir():
            if out.exists():
                shutil.rmtree(out)
            shutil.copytree(share / "v2-real", out)
            print(f"lxcfs-guard-vm: wrote {out}")

    return run_vm(job_spec([sys.executable, "-m", "tests.vm.dump_v2", "--in-vm", "/vmshare/v2-real"]), collect)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
