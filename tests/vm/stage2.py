"""Stage 2 of the cgroup v2 test VM: PID 1 in the overlay root (no systemd), standard library only.

Mounts what the tests need (proc, sysfs, cgroup2 with nsdelegate, tmpfs /tmp /run /dev/shm, devpts, fusectl),
enables every controller in the root's `cgroup.subtree_control` so test cgroups get memory/cpu/cpuset/io/pids
files, turns the second disk (/dev/vdb) into swap so swap limits and usage are real, runs the job the host
left in /vmshare/job.json, writes its exit code to /vmshare/exit_code, syncs and powers off. As PID 1 it also
reaps orphans, so a test that waits for a killed daemon's pid to vanish sees it go. Any failure here still
powers off: the host then finds no exit code and reports the run as broken.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import traceback

SHARE = "/vmshare"
RB_POWER_OFF = 0x4321FEDC

MOUNTS = (
    # (fstype, source, target, options)
    ("proc", "proc", "/proc", "nosuid,nodev,noexec"),
    ("sysfs", "sysfs", "/sys", "nosuid,nodev,noexec"),
    ("cgroup2", "cgroup2", "/sys/fs/cgroup", "nosuid,nodev,noexec,nsdelegate"),
    ("fusectl", "fusectl", "/sys/fs/fuse/connections", ""),
    ("tmpfs", "tmpfs", "/tmp", "mode=1777"),
    ("tmpfs", "tmpfs", "/run", "mode=0755"),
    ("tmpfs", "tmpfs", "/dev/shm", "mode=1777"),
    ("devpts", "devpts", "/dev/pts", "newinstance,ptmxmode=0666,mode=0620"),
)


def log(msg: str) -> None:
    print(f"lxcfs-guard-vm: {msg}", flush=True)


def mount_all(keep: list[str]) -> None:
    """Mount MOUNTS; host directories in `keep` (the checkout, the virtualenv) that a fresh tmpfs would hide
    (a clone under /tmp) are carried over: bound aside first, then moved back to the same path on top."""
    parked: list[tuple[str, str]] = []
    fresh = [target for fstype, _, target, _ in MOUNTS if fstype == "tmpfs"]
    for i, path in enumerate(sorted(set(keep))):
        if any(path == t or path.startswith(t + "/") for t in fresh) and os.path.isdir(path):
            aside = f"/.vm-keep-{i}"
            os.makedirs(aside, exist_ok=True)
            subprocess.run(["mount", "--bind", path, aside], check=True)
            parked.append((aside, path))
    for fstype, source, target, opts in MOUNTS:
        os.makedirs(target, exist_ok=True)
        cmd = ["mount", "-t", fstype] + (["-o", opts] if opts else []) + [source, target]
        subprocess.run(cmd, check=True)
    for aside, path in parked:
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "--move", aside, path], check=True)


def enable_swap(device: str = "/dev/vdb") -> None:
    """The host's second disk becomes swap, so memory.swap.* and the swap lines see real numbers."""
    if os.path.exists(device):
        subprocess.run(["mkswap", "-q", device], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["swapon", device], check=True)


def enable_controllers(root: str = "/sys/fs/cgroup") -> list[str]:
    """Write +ctrl for each available controller into the root's subtree_control; return what is enabled."""
    with open(f"{root}/cgroup.controllers") as f:
        available = f.read().split()
    for ctrl in available:
        try:
            with open(f"{root}/cgroup.subtree_control", "w") as f:
                f.write(f"+{ctrl}")
        except OSError as e:
            log(f"cannot enable {ctrl}: {e}")
    with open(f"{root}/cgroup.subtree_control") as f:
        return f.read().split()


def run_job(job: dict) -> int:
    """Start the job and reap every child until it exits (PID 1 inherits all orphans)."""
    env = dict(job.get("env", {}))
    proc = subprocess.Popen(job["argv"], cwd=job["cwd"], env=env)

    def on_alarm(_signum: int, _frame: object) -> None:
        log("job timed out inside the VM; killing it")
        os.kill(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(job.get("timeout", 3600)))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 1
        if pid == proc.pid:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(RB_POWER_OFF)
    # Only reached if reboot failed: exiting PID 1 panics the kernel, and panic=-1 + -no-reboot ends qemu.
    os._exit(1)


def main() -> None:
    code = 3
    os.environ["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    try:
        with open(f"{SHARE}/job.json") as f:
            job = json.load(f)
        mount_all(job.get("keep", []))
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        enabled = enable_controllers()
        enable_swap()
        subprocess.run(["hostname", "lxcfs-guard-vm"], check=False)
        log(f"stage 2 up after {uptime:.1f}s guest time; controllers: {' '.join(enabled)}")
        code = run_job(job)
        log(f"job exited with {code}")
    except BaseException:  # noqa: BLE001  PID 1 must never die with an exception
        traceback.print_exc()
        code = 3
    try:
        with open(f"{SHARE}/exit_code", "w") as f:
            f.write(f"{code}\n")
    finally:
        sys.stdout.flush()
        power_off()


if __name__ == "__main__":
    main()
