"""A minimal runc driver for the demo and the tests: runc 1.1 + a busybox rootfs from the host's busybox-static.

It lives in the package (not under tests/) because `make demo` runs real containers with it too; the tests
import it through tests/support/runc.py. Nothing in the daemon, the engine or the hook uses it.

The rootfs template is built once per test process in a temporary directory (busybox plus one symlink per
applet) and every container gets a hard-linked copy of it, so a test may delete files from its own rootfs
(the "rootfs lacks /proc/swaps" case) without touching the others. Configs start from `runc spec` (so they
are what runc itself considers valid) and are adjusted: no terminal, a memory limit, a cpuset, optional hooks.

Every container has a unique id (`lgtest-<uuid>`), a cgroup path of its own (`/lgtest-<uuid>` in each
hierarchy, removed by runc on delete) and is removed with `runc delete --force` and `rm -rf` of its bundle on
exit, even when the test fails.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

RUNC = shutil.which("runc") or "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
MiB = 1 << 20

_template: str | None = None
_spec: dict[str, Any] | None = None


def _cleanup_template() -> None:
    if _template is not None:
        shutil.rmtree(os.path.dirname(_template), ignore_errors=True)


def rootfs_template() -> str:
    """The busybox rootfs every container copies, built on first use and removed when the process exits."""
    global _template
    if _template is not None:
        return _template
    if not os.access(BUSYBOX, os.X_OK):
        raise RuntimeError(f"{BUSYBOX} missing: install busybox-static (make setup does)")
    top = tempfile.mkdtemp(prefix="lxcfs-guard-rootfs-")
    root = os.path.join(top, "rootfs")
    for d in ("bin", "proc", "sys", "dev", "etc", "tmp", "root", "run"):
        os.makedirs(os.path.join(root, d))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    _template = root
    atexit.register(_cleanup_template)
    return root


def base_spec() -> dict[str, Any]:
    """`runc spec`'s default config (generated once), as a fresh dict each call."""
    global _spec
    if _spec is None:
        with tempfile.TemporaryDirectory(prefix="lxcfs-guard-spec-") as d:
            subprocess.run([RUNC, "spec"], cwd=d, check=True, capture_output=True)
            with open(os.path.join(d, "config.json")) as f:
                _spec = json.load(f)
    return copy.deepcopy(_spec)


def hook_entry(path: str, args: Sequence[str], env: dict[str, str] | None = None, timeout: int | None = None) -> dict:
    """One OCI hook object (`path` absolute, `args` including argv[0])."""
    entry: dict[str, Any] = {"path": path, "args": list(args)}
    if env:
        entry["env"] = [f"{k}={v}" for k, v in env.items()]
    if timeout:
        entry["timeout"] = timeout
    return entry


def guard_hooks(
    binary: str, extra_args: Sequence[str] = (), snippet: dict | None = None, env: dict[str, str] | None = None
) -> dict[str, list[dict]]:
    """The `hooks` of a config.json that runs `binary oci-hook` at createRuntime and poststop.

    With `snippet` (the parsed deploy/runc/config-snippet.json) its entries are used as shipped, only the
    binary's path swapped in and `extra_args` appended, so the tests run the very configuration users copy.
    """
    if snippet is None:
        snippet = {
            "hooks": {
                stage: [{"path": binary, "args": ["lxcfs-guard", "oci-hook"]}]
                for stage in ("createRuntime", "poststop")
            }
        }
    hooks: dict[str, list[dict]] = {}
    for stage, entries in snippet["hooks"].items():
        hooks[stage] = []
        for entry in entries:
            e = copy.deepcopy(entry)
            e["path"] = binary
            e["args"] = list(e.get("args", [])) + list(extra_args)
            if env:
                e["env"] = list(e.get("env", [])) + [f"{k}={v}" for k, v in env.items()]
            hooks[stage].append(e)
    return hooks


def make_config(
    cid: str,
    *,
    memory: int | None = 64 * MiB,
    cpus: str | None = "0",
    args: Sequence[str] = ("sleep", "86400"),
    hooks: dict[str, list[dict]] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec = base_spec()
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["process"]["env"] = [e for e in spec["process"]["env"] if not e.startswith("TERM=")]
    spec["hostname"] = cid[:63]
    spec["root"] = {"path": "rootfs", "readonly": True}
    linux = spec["linux"]
    linux["cgroupsPath"] = f"/{cid}"
    resources = linux.setdefault("resources", {})
    if memory is not None:
        resources["memory"] = {"limit": int(memory)}
    if cpus is not None:
        resources["cpu"] = {"cpus": cpus, "mems": "0"}
    if hooks:
        spec["hooks"] = hooks
    if annotations:
        spec["annotations"] = dict(annotations)
    return spec


@dataclass
class Container:
    """A runc container the test owns; `bundle/rootfs` is its own copy of the busybox rootfs."""

    id: str
    bundle: str
    config: dict[str, Any]
    runc_root: str | None = None
    started: bool = False
    log: str = field(default="")

    @property
    def rootfs(self) -> str:
        return os.path.join(self.bundle, self.config["root"]["path"])

    def _runc(self, *argv: str, check: bool = True, timeout: float = 30, **kw: Any) -> subprocess.CompletedProcess:
        cmd = [RUNC] + (["--root", self.runc_root] if self.runc_root else []) + list(argv)
        return subprocess.run(cmd, check=check, timeout=timeout, **kw)

    def write_config(self) -> None:
        with open(os.path.join(self.bundle, "config.json"), "w") as f:
            json.dump(self.config, f, indent=2)

    def run(self, stdout: int | None = None) -> None:
        """`runc run -d`: create (hooks createRuntime ... run here) and start. Raises with runc's output on failure.

        The container inherits runc's stdio, so it gets /dev/null and a log file, never a pipe (a pipe would
        stay open as long as the container lives and a reader would never see EOF) -- unless the caller
        passes `stdout`, a file descriptor it wants the container's stdout on (e.g. a pipe it reads lines
        from and time-stamps as they arrive); runc's own errors still go to the log.
        """
        self.write_config()
        with open(self.log, "ab") as out:
            proc = self._runc(
                "run",
                "-d",
                "--bundle",
                self.bundle,
                self.id,
                check=False,
                stdin=subprocess.DEVNULL,
                stdout=out if stdout is None else stdout,
                stderr=out,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"runc run {self.id} failed ({proc.returncode}):\n{self.output()}")
        self.started = True

    def output(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            return f.read()
        return ""

    def state(self) -> dict[str, Any]:
        return json.loads(self._runc("state", self.id, capture_output=True, text=True).stdout)

    @property
    def pid(self) -> int:
        return int(self.state()["pid"])

    def exec(self, *argv: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess:
        """Run `argv` inside the container (runc exec), capturing text stdout/stderr."""
        proc = self._runc(
            "exec",
            self.id,
            *argv,
            check=False,
            timeout=timeout,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"runc exec {self.id} {argv} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def read(self, path: str, timeout: float = 15) -> str:
        """The file's text as a program inside the container reads it with read(2) (busybox `head -c`);
        raises (with the error text) if the read fails, e.g. ENOTCONN. (busybox `cat` uses sendfile(2),
        a different kernel path: test it explicitly where it matters.)"""
        return self.exec("head", "-c", "1048576", path, timeout=timeout).stdout

    def delete(self) -> subprocess.CompletedProcess:
        """`runc delete --force` (runs the poststop hooks); safe to call twice."""
        proc = self._runc("delete", "--force", self.id, check=False, capture_output=True, text=True)
        self.started = False
        return proc


def new_id(prefix: str = "lgtest") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def container(
    *,
    memory: int | None = 64 * MiB,
    cpus: str | None = "0",
    args: Sequence[str] = ("sleep", "86400"),
    hooks: dict[str, list[dict]] | None = None,
    annotations: dict[str, str] | None = None,
    remove: Sequence[str] = (),
    customize: Callable[[Container], None] | None = None,
    start: bool = True,
    runc_root: str | None = None,
    prefix: str = "lgtest",
) -> Iterator[Container]:
    """A running (unless start=False) runc container, deleted and removed on exit.

    `remove` lists rootfs paths to delete before start (e.g. "proc" to make every /proc target missing);
    `customize(c)` may edit `c.config` (and the rootfs) before start.
    """
    cid = new_id(prefix)
    bundle = tempfile.mkdtemp(prefix=f"{cid}-")
    c = Container(
        id=cid,
        bundle=bundle,
        runc_root=runc_root,
        config=make_config(cid, memory=memory, cpus=cpus, args=args, hooks=hooks, annotations=annotations),
        log=os.path.join(bundle, "runc.log"),
    )
    try:
        subprocess.run(["cp", "-al", rootfs_template(), c.rootfs], check=True)
        for rel in remove:
            p = os.path.join(c.rootfs, rel.lstrip("/"))
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        if customize:
            customize(c)
        if start:
            c.run()
        else:
            c.write_config()
        yield c
    finally:
        c.delete()
        # runc removes its cgroups on delete; wait briefly in case the kernel is still reaping the init.
        for _ in range(50):
            if c._runc("state", cid, check=False, capture_output=True).returncode != 0:
                break
            time.sleep(0.05)
        shutil.rmtree(bundle, ignore_errors=True)
