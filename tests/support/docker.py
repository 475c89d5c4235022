"""A private dockerd for tests (Debian's docker.io): everything it owns lives in one tempdir (data root,
exec root, pidfile, its API socket), it touches no iptables, makes no bridge, puts its containers' cgroups
under a unique parent, and is stopped by its pid. Images are made locally with `docker import` of a
busybox-static rootfs: nothing is pulled."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from lxcfs_guard.kernel.procfs import read_mountinfo
from lxcfs_guard.testing.procs import force_unmount, wait_for

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "sed", "head", "sleep", "df", "grep", "wc", "ls", "true", "echo")
# Directories dockerd and its containerd create at fixed host paths whatever their roots are.
FIXED_DIRS = ("/run/docker/plugins", "/run/docker", "/run/containerd/s", "/run/containerd")


def docker_available() -> bool:
    return shutil.which("dockerd") is not None and os.path.exists("/usr/bin/docker") and os.path.exists(BUSYBOX)


@dataclass
class Docker:
    top: str
    sock: str
    proc: subprocess.Popen
    cgroup_parent: str

    def cli(
        self, *argv: str, timeout: float = 60.0, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess:
        r = subprocess.run(
            ["/usr/bin/docker", "-H", f"unix://{self.sock}", *argv], input=stdin, capture_output=True, timeout=timeout
        )
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(argv)}: {r.stderr.decode(errors='replace')}\n{self.log()}")
        return r

    def log(self) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.top, "dockerd.log"), errors="replace") as f:
            return f.read()[-3000:]
        return ""

    def import_busybox(self, tag: str = "lxcfs-guard-busybox:test") -> str:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for d in ("bin", "proc", "sys", "dev", "etc", "tmp"):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, "bin/busybox")
            for applet in APPLETS:
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        self.cli("import", "-", tag, stdin=buf.getvalue())
        return tag


def _cgroup_paths(name: str) -> list[str]:
    return [
        f"/sys/fs/cgroup/{c}/{name}"
        for c in os.listdir("/sys/fs/cgroup")
        if os.path.isdir(f"/sys/fs/cgroup/{c}/{name}")
    ]


def _rmdir_tree(path: str) -> None:
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            _rmdir_tree(entry.path)
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


@contextlib.contextmanager
def dockerd(timeout: float = 60.0) -> Iterator[Docker]:
    top = tempfile.mkdtemp(prefix="lxcfs-guard-docker-")
    sock = os.path.join(top, "docker.sock")
    conf = os.path.join(top, "daemon.json")
    with open(conf, "w") as f:
        f.write("{}\n")  # never /etc/docker/daemon.json
    existed = {d for d in FIXED_DIRS if os.path.exists(d)}
    cgroup_parent = f"lxcfs-guard-docker-{uuid.uuid4().hex[:8]}"
    cmd = [
        "dockerd",
        "--config-file",
        conf,
        "--data-root",
        f"{top}/data",
        "--exec-root",
        f"{top}/exec",
        "--pidfile",
        f"{top}/dockerd.pid",
        "-H",
        f"unix://{sock}",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--storage-driver=vfs",
        "--exec-opt",
        "native.cgroupdriver=cgroupfs",
        "--userland-proxy=false",
        "--cgroup-parent",
        f"/{cgroup_parent}",
    ]
    with open(os.path.join(top, "dockerd.log"), "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    d = Docker(top, sock, proc, cgroup_parent)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"dockerd exited {proc.returncode}:\n{d.log()}")
            return os.path.exists(sock) and d.cli("version", check=False, timeout=10).returncode == 0

        wait_for(up, timeout, 0.1, "dockerd to answer")
        yield d
    finally:
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                ids = d.cli("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    d.cli("rm", "-f", *[i.decode() for i in ids], check=False, timeout=60)
            proc.send_signal(signal.SIGTERM)  # dockerd stops its own containerd
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for m in sorted(read_mountinfo(), key=lambda m: -len(m.mount_point)):
            if m.mount_point.startswith(top + "/"):
                force_unmount(m.mount_point)
        for path in _cgroup_paths(cgroup_parent):
            _rmdir_tree(path)
        for path in FIXED_DIRS:
            if path not in existed:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        shutil.rmtree(top, ignore_errors=True)
