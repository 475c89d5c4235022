"""Host side of the cgroup v2 test VM: `python -m tests.vm.run [pytest args]` (what `make test-v2` runs).

Boots the installed Debian kernel under qemu (TCG: this host's /dev/kvm runs only special guest kernels), runs
`pytest -m v2 [pytest args]` in this checkout inside it, streams the VM console (the tests' output) here, then
prints how many v2 tests ran (not skipped) and exits with the job's exit code. qemu always runs under
`timeout` and is ended by its pid; the per-run directory (results share + scratch disk) is removed afterwards.

Knobs (environment): LXCFS_GUARD_VM_TIMEOUT (hard limit for the whole VM, s, default 900),
LXCFS_GUARD_VM_MEMORY (MiB, default 2048), LXCFS_GUARD_VM_CPUS (default 4: LXCFS 7.0.0's own test scripts need
4), LXCFS_GUARD_VM_KEEP=1 (keep the per-run directory and print its path).

LXCFS 7.0.0 (the v2 reference) is built on the host first (tests/support/lxcfs7.py, outside the checkout) and
found by the VM at the same path; its directory goes to the job as LXCFS7_BUILD. The swap disk is 320 MiB
(LXCFS's test_meminfo_hierarchy wants at least 256 MiB) and zswap is on (zswap.enabled=1), so the Zswap lines
have real figures to agree with.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.vm.initramfs import Kernel, VMSetupError, ensure_initramfs, installed_kernel
from tests.vm.junit import count_junit

REPO = Path(__file__).resolve().parents[2]
STAGE2 = Path(__file__).resolve().parent / "stage2.py"
GUEST_SHARE = "/vmshare"  # where stage 1 mounts the results share (init.sh)
SCRATCH_BYTES = 64 * 1024 * 1024
SWAP_BYTES = 320 * 1024 * 1024
READY_MARK = "lxcfs-guard-vm: stage 2 up"
# The firmware's terminal control sequences (clear screen, wrap off) would garble the log.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")
# Per-test limit inside the VM: software emulation runs ~15x slower than the host.
VM_TEST_TIMEOUT = 600


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def pytest_argv(pytest_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "pytest", "-m", "v2", "-p", "no:cacheprovider", f"--timeout={VM_TEST_TIMEOUT}",
        *pytest_args, f"--junitxml={GUEST_SHARE}/junit.xml",
    ]  # fmt: skip


def job_spec(argv: list[str]) -> dict:
    """What stage 2 runs, from this checkout with this interpreter (the host's virtualenv, same path inside)."""
    venv_bin = os.path.dirname(sys.executable)
    env = {
        "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "PYTHONUNBUFFERED": "1",
        "LXCFS_GUARD_VM": "1",
        "LXCFS_GUARD_VM_SCRATCH": "/dev/vda",
        "LXCFS_GUARD_VM_SWAP": "/dev/vdb",
        "LIBFUSE": "fuse3",  # LXCFS's test scripts ask which libfuse the reference was built with
    }
    try:
        from tests.support.lxcfs7 import ensure_lxcfs7

        env["LXCFS7_BUILD"] = str(ensure_lxcfs7())
    except Exception as e:  # noqa: BLE001  the v2 tests that need it fail, naming this
        env["LXCFS7_MISSING"] = str(e)
    # Host paths the job needs even if they sit under /tmp or /run, which the VM mounts fresh.
    keep = [str(REPO), sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)]
    keep = [p if os.path.isdir(p) else os.path.dirname(p) for p in keep]
    return {"argv": argv, "cwd": str(REPO), "env": env, "keep": keep}


def qemu_command(
    kernel: Kernel, initrd: Path, share: Path, scratch: Path, swap: Path, memory: int, cpus: int
) -> list[str]:
    """/dev/vda: a raw scratch disk for io.stat tests; /dev/vdb: swap (stage 2 runs swapon), so swap limits
    and swap usage are real too."""
    append = f"console=ttyS0 panic=-1 quiet cgroup_no_v1=all zswap.enabled=1 lgstage2={STAGE2}"
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", str(cpus), "-m", str(memory),
        "-machine", "q35", "-nic", "none", "-nographic", "-no-reboot",
        "-kernel", kernel.image, "-initrd", str(initrd), "-append", append,
        "-drive", f"file={scratch},if=virtio,format=raw", "-drive", f"file={swap},if=virtio,format=raw",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={share},mount_tag=share,security_model=none",
    ]  # fmt: skip


def run_vm(job: dict, collect: Callable[[Path], None] | None = None) -> int:
    """Boot the VM, run `job` (see job_spec) as stage 2's child, stream the console here.

    Returns the job's exit code, or 124 on the hard timeout, or 1 if none came back.
    `collect(share)` runs before the per-run directory is removed, to copy results out of the share.
    """
    hard_timeout = _env_int("LXCFS_GUARD_VM_TIMEOUT", 900)
    memory = _env_int("LXCFS_GUARD_VM_MEMORY", 2048)
    cpus = _env_int("LXCFS_GUARD_VM_CPUS", 4)
    if shutil.which("qemu-system-x86_64") is None:
        raise VMSetupError("qemu-system-x86_64 missing (apt-get install --no-install-recommends qemu-system-x86)")
    t0 = time.monotonic()
    kernel = installed_kernel()
    initrd = ensure_initramfs(kernel)
    workdir = Path(tempfile.mkdtemp(prefix="lxcfs-guard-vm-"))
    try:
        share = workdir / "share"
        share.mkdir()
        scratch, swap = workdir / "scratch.img", workdir / "swap.img"
        for disk, size in ((scratch, SCRATCH_BYTES), (swap, SWAP_BYTES)):
            with open(disk, "wb") as f:
                f.truncate(size)
        job = dict(job, timeout=max(60, hard_timeout - 30))
        (share / "job.json").write_text(json.dumps(job))
        cmd = ["timeout", "--kill-after=10", str(hard_timeout)]
        cmd += qemu_command(kernel, initrd, share, scratch, swap, memory, cpus)
        print(
            f"lxcfs-guard-vm: booting {kernel.image} (qemu TCG, {cpus} cpus, {memory} MiB), "
            f"hard timeout {hard_timeout}s",
            flush=True,
        )
        t_boot = time.monotonic()
        ready_at = None
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = ANSI.sub("", raw.decode(errors="replace")).replace("\r", "").rstrip("\n")
                if ready_at is None and READY_MARK in line:
                    ready_at = time.monotonic()
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            qemu_rc = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: `timeout` passes SIGTERM on to qemu; SIGKILL would orphan it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
        t_end = time.monotonic()
        print("-" * 70)
        if ready_at is not None:
            print(f"lxcfs-guard-vm: boot to stage 2: {ready_at - t_boot:.1f}s; whole VM run: {t_end - t_boot:.1f}s; "
                  f"total with initramfs: {t_end - t0:.1f}s")  # fmt: skip
        code_file = share / "exit_code"
        if code_file.exists():
            code = int(code_file.read_text().strip() or 1)
        elif qemu_rc in (124, 137):
            print(f"lxcfs-guard-vm: hard timeout ({hard_timeout}s) hit; VM killed")
            code = 124
        else:
            print(f"lxcfs-guard-vm: the VM stopped without an exit code (qemu exit {qemu_rc})")
            code = 1
        if collect is not None:
            collect(share)
        return code
    finally:
        if os.environ.get("LXCFS_GUARD_VM_KEEP") == "1":
            print(f"lxcfs-guard-vm: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def boot_and_run(pytest_args: list[str]) -> int:
    """`pytest -m v2 pytest_args` in the VM; prints how many v2 tests ran and returns pytest's exit code."""

    def report(share: Path) -> None:
        junit_file = share / "junit.xml"
        if junit_file.exists():
            print("lxcfs-guard-vm: " + count_junit(junit_file.read_text()).summary())
        else:
            print("lxcfs-guard-vm: no junit report came back")

    code = run_vm(job_spec(pytest_argv(pytest_args)), report)
    print(f"lxcfs-guard-vm: exit code {code}")
    return code


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through run_vm's finally: qemu stopped, per-run dir removed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        return boot_and_run(args)
    except VMSetupError as e:
        print(f"lxcfs-guard-vm: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
