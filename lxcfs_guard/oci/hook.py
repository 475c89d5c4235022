"""`lxcfs-guard oci-hook`: the OCI runtime hook (runc, crun, podman/CRI-O hooks.d).

createRuntime (or prestart): bind the virtual /proc files into the new container's rootfs, inside its mount
namespace, before the container's process runs, and register the container so the remount engine can repair
it after a daemon restart. poststop: forget it. Both are idempotent: a second run finds the binds already
pointing at the live mount and only refreshes the registration.

A hook runs on every container start, so it imports little (json, os, the remount engine's ctypes edge) and
never a FUSE or async library. It is lenient by default: any problem is logged (stderr, which the runtime
shows, and the journal when there is one) and the container starts with the host's /proc as it would have
without us. Only when strict mode is asked for (`--strict`, LXCFS_GUARD_STRICT=1 in the hook's env, or the
annotation io.lxcfs-guard.strict=true) does a failure stop the container, with a message saying why.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from collections.abc import Mapping

from lxcfs_guard.config import FSTYPE, LXCFS_FSTYPE, default_mountpoint, default_state_dir, target_for
from lxcfs_guard.oci.state import (
    CREATE,
    BindPlan,
    BundleConfig,
    HookInputError,
    HookState,
    options_from,
    parse_config,
    parse_state,
    plan_binds,
    stage_of,
    strict_hint,
)

PROG = "lxcfs-guard oci-hook"
ENV_DEADLINE = "LXCFS_GUARD_HOOK_DEADLINE"
DEFAULT_DEADLINE = 8.0  # seconds; the shipped hook configs give the runtime's timeout as 10
MAX_STATE_BYTES = 1 << 20
MAX_CONFIG_BYTES = 4 << 20  # runc's own spec is ~3 KB; a CRI config with every annotation well under 1 MB
LIVE_FSTYPES = (FSTYPE, LXCFS_FSTYPE)


class HookFailure(Exception):
    """The hook could not do its job for this container (reported; fatal only in strict mode)."""


def configure_oci_hook(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "OCI runtime hook. Reads the container state JSON on stdin. At createRuntime/prestart it binds the "
        "virtual /proc files into the container and registers it; at poststop it unregisters it. "
        "The stage is read from the state's status unless --stage is given."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "container annotations:\n"
        "  io.lxcfs-guard.strict=true    refuse to start the container if a file cannot be bound\n"
        "  io.lxcfs-guard.enable=false   leave this container alone (=true selects it for the opt-in hooks.d)\n"
        "  io.lxcfs-guard.files=LIST     bind only these, e.g. meminfo,cpuinfo,online\n"
        "Without strict mode every problem is logged (stderr, journal) and the container starts with the\n"
        "host's /proc."
    )
    parser.add_argument(
        "--stage",
        choices=("createRuntime", "prestart", "poststart", "poststop"),
        help="the hook stage (default: from the state's status)",
    )
    parser.add_argument(
        "--mountpoint",
        default=None,
        help="the live lxcfs-guard mount (default: env LXCFS_GUARD_MOUNTPOINT, else /var/lib/lxcfs)",
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="registry directory (default: env LXCFS_GUARD_STATE_DIR, else /run/lxcfs-guard)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail the container start if the files cannot be bound (also LXCFS_GUARD_STRICT=1 "
        "in the hook's env, or the annotation io.lxcfs-guard.strict=true)",
    )


# --- reporting ---------------------------------------------------------------------------------------------


def log(message: str, *, cid: str | None = None, error: bool = False) -> None:
    """One line to stderr (runtimes show a failed hook's stderr) and, best effort, to the journal."""
    from lxcfs_guard.text import printable  # ids and paths are the runtime's or the bundle's: escaped

    line = printable(f"{PROG}: {cid + ': ' if cid else ''}{message}")
    print(line, file=sys.stderr, flush=True)
    if os.path.exists("/run/systemd/journal/socket"):
        try:
            from systemd import journal  # imported only when there is a journal to write to

            journal.send(
                line,
                SYSLOG_IDENTIFIER="lxcfs-guard-oci-hook",
                PRIORITY=3 if error else 6,
                CONTAINER_ID=printable(cid or ""),
            )
        except Exception:  # noqa: BLE001 - the journal is a nicety; never let it fail a container start
            pass


# --- kernel-touching helpers -------------------------------------------------------------------------------


def live_mount_dev(mountpoint: str) -> int:
    """st_dev of the live FUSE mount at `mountpoint`; HookFailure if there is none.

    Read from the mount table and a cache-only statx, so a hung daemon cannot hang the container start."""
    from lxcfs_guard.kernel import syscalls
    from lxcfs_guard.kernel.procfs import mounts_at

    path = os.path.realpath(mountpoint)
    mounts = mounts_at(path)
    if not mounts or mounts[-1].fstype not in LIVE_FSTYPES:
        raise HookFailure(f"nothing serves {path}: is `lxcfs-guard supervise` (or `serve`) running?")
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        return syscalls.statx_cached(fd)[1]
    finally:
        os.close(fd)


class ContainerView:
    """Looks at paths as the container will see them: resolved inside its root (`root` prefixed before
    pivot_root) without following any symlink the image put there, and without asking a FUSE daemon."""

    def __init__(self, pid: int, root: str | None) -> None:
        self.root = root or ""
        self.dirfd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def lookup(self, target: str) -> int | OSError | None:
        """st_dev of `target`; None if the container has no such file (ENOENT, ENOTDIR); the OSError if it
        has something we must not bind over (ELOOP: a symlink somewhere on the path)."""
        from lxcfs_guard.kernel import syscalls

        try:
            fd = syscalls.openat2(
                self.dirfd,
                self.root + target,
                os.O_PATH | os.O_CLOEXEC,
                syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS,
            )
        except OSError as e:
            return None if e.errno in (errno.ENOENT, errno.ENOTDIR) else e
        try:
            return syscalls.statx_cached(fd)[1]
        finally:
            os.close(fd)

    def close(self) -> None:
        os.close(self.dirfd)


def read_config(state: HookState) -> BundleConfig:
    """The bundle's config.json: a regular file (never through a symlink: a link to /dev/zero grew the hook
    to 24 GB, a link to a root-only file put its bytes in our error), at most MAX_CONFIG_BYTES, read in
    chunks so the deadline's SIGALRM can stop it. Errors name the file, never its content."""
    import stat

    path = os.path.join(state.bundle, "config.json")
    try:
        dfd = os.open(state.bundle, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = os.open(
                "config.json", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dfd
            )
        finally:
            os.close(dfd)
    except OSError as e:
        why = "a symlink (refused)" if e.errno == errno.ELOOP else e.strerror
        raise HookFailure(f"cannot read {path}: {why}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HookFailure(f"cannot read {path}: not a regular file (refused)")
        if st.st_size > MAX_CONFIG_BYTES:
            raise HookFailure(f"cannot read {path}: larger than {MAX_CONFIG_BYTES} bytes (refused)")
        chunks, total = [], 0
        while total <= MAX_CONFIG_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_CONFIG_BYTES:
            raise HookFailure(f"cannot read {path}: larger than {MAX_CONFIG_BYTES} bytes (refused)")
    except OSError as e:
        raise HookFailure(f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        return parse_config(b"".join(chunks), state.bundle)
    except HookInputError as e:
        raise HookFailure(str(e)) from None


def check_pid_root(pid: int, rootfs: str, creating: bool) -> None:
    """The pid must be the bundle's container: its root (after pivot_root) or, while "creating", the rootfs
    path inside its mount namespace, must be the very directory root.path names (st_dev and st_ino).
    Otherwise a runtime bug or a forged state would have us bind into, and register, some other process."""
    from lxcfs_guard.kernel import syscalls

    try:
        want = os.stat(rootfs)
    except OSError as e:
        raise HookFailure(f"cannot check that pid {pid} is this bundle's container: {rootfs}: {e.strerror}") from None
    try:
        if creating:
            root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fd = syscalls.openat2(
                    root,
                    rootfs,
                    os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
                    syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS,
                )
            finally:
                os.close(root)
            try:
                have = os.fstat(fd)
            finally:
                os.close(fd)
        else:
            have = os.stat(f"/proc/{pid}/root")
    except OSError as e:
        raise HookFailure(f"pid {pid} is not this bundle's container ({rootfs}: {e.strerror} there): refused") from None
    if (have.st_dev, have.st_ino) != (want.st_dev, want.st_ino):
        raise HookFailure(f"pid {pid} is not this bundle's container (its root is not {rootfs}): refused")


def do_create(state: HookState, cfg: BundleConfig, mountpoint: str, state_dir: str, files: tuple[str, ...]) -> str:
    """Bind `files` into the container and register it. Returns a one-line summary for the log."""
    if not state.pid:
        raise HookFailure("the state has no pid: run me at createRuntime or prestart, not before create")
    from lxcfs_guard.kernel.procfs import ProcessGone

    # Before pivot_root (status "creating") the rootfs sits at its host path inside the container's mount
    # namespace; afterwards the container's / is its rootfs.
    root = os.path.realpath(cfg.rootfs) if state.status == "creating" else None
    check_pid_root(state.pid, os.path.realpath(cfg.rootfs), creating=state.status == "creating")
    live_dev = live_mount_dev(mountpoint)
    try:
        view = ContainerView(state.pid, root)
    except OSError as e:
        raise HookFailure(f"cannot look into the container (pid {state.pid}): {e.strerror}") from None
    try:
        found = {target_for(f): view.lookup(target_for(f)) for f in files}
    finally:
        view.close()
    plan: BindPlan = plan_binds(files, lambda t: found[t] is not None)
    problems = [
        f"{t} is a symlink (or has one on its path) in the container: refused, never bound over"
        if e.errno == errno.ELOOP
        else f"{t}: {e.strerror or e}"
        for t, e in found.items()
        if isinstance(e, OSError)
    ]
    live = {t for t, dev in found.items() if dev == live_dev}  # a second run finds them bound: nothing to do
    todo = [(s, t) for s, t in plan.binds if t not in live and not isinstance(found[t], OSError)]
    from lxcfs_guard.remount import engine
    from lxcfs_guard.remount.registry import Registry

    bound = list(todo)
    try:
        if todo:
            try:
                engine.attach(state.pid, mountpoint, todo, root=root, cid=state.id, state_dir=state_dir)
            except engine.AttachError as e:
                repaired = set(e.report.repaired)
                bound = [b for b in todo if b[1] in repaired]
                problems += [str(err) for err in e.report.errors]
        registered = [b for b in plan.binds if b[1] in live or b in bound]
        if registered:  # what is bound is registered even if something else failed: remount must know it
            Registry(state_dir).add_container(state.id, state.pid, registered)
    except ProcessGone:
        raise HookFailure(f"the container's init (pid {state.pid}) is gone") from None
    except OSError as e:
        raise HookFailure(f"binding into pid {state.pid} failed: {e}") from None
    summary = f"bound {len(bound)} of {len(plan.binds)} files (pid {state.pid})"
    if plan.missing:
        summary += f"; skipped (absent in the container): {', '.join(plan.missing)}"
    if problems:
        raise HookFailure(f"{summary}; failed: {'; '.join(problems)}")
    return summary


def do_stop(state: HookState, state_dir: str) -> str:
    from lxcfs_guard.remount.registry import Registry

    removed = Registry(state_dir).remove(state.id)
    return "unregistered" if removed else "was not registered"


# --- the command -------------------------------------------------------------------------------------------


def _deadline(env: Mapping[str, str]) -> float:
    try:
        return max(0.05, float(env.get(ENV_DEADLINE) or DEFAULT_DEADLINE))
    except ValueError:
        return DEFAULT_DEADLINE


def _on_deadline(signum: int, frame: object) -> None:
    raise HookFailure(
        "gave up after the hook's deadline (another repair holds the lock, or the container is "
        f"wedged); {ENV_DEADLINE} sets it"
    )


def run_oci_hook(args: argparse.Namespace, stdin: bytes | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    t0 = time.monotonic()
    mountpoint = args.mountpoint or default_mountpoint()
    state_dir = args.state_dir or default_state_dir()
    cid: str | None = None
    strict = strict_hint(env) or args.strict
    # Give up on our own before the runtime's hook timeout kills us: a killed hook fails the container
    # start even in lenient mode. (Interval timers are not inherited by the engine's forked workers.)
    signal.signal(signal.SIGALRM, _on_deadline)
    signal.setitimer(signal.ITIMER_REAL, _deadline(env))
    try:
        raw = sys.stdin.buffer.read(MAX_STATE_BYTES + 1) if stdin is None else stdin
        if len(raw) > MAX_STATE_BYTES:
            raise HookInputError(f"OCI state on stdin is larger than {MAX_STATE_BYTES} bytes")
        state = parse_state(raw)
        cid = state.id
        strict = strict_hint(env, [state.annotations]) or args.strict
        stage = stage_of(state, args.stage)
        if stage == CREATE:
            cfg = read_config(state)
            opts = options_from(env, state.annotations, cfg.annotations, strict=args.strict)
            strict = opts.strict
            if not opts.enabled:
                summary = "disabled by annotation io.lxcfs-guard.enable=false; leaving the container alone"
            else:
                summary = do_create(state, cfg, mountpoint, state_dir, opts.files)
        else:
            strict = False  # strictness is about refusing a start; a stop cannot be refused
            summary = do_stop(state, state_dir)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except (HookInputError, HookFailure, OSError) as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        what = e.strerror + f": {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        if strict:
            log(f"error: {what} (strict mode: refusing to start the container)", cid=cid, error=True)
            return 1
        log(
            f"warning: {what} (the container keeps the host's /proc; set io.lxcfs-guard.strict=true to refuse instead)",
            cid=cid,
            error=True,
        )
        return 0
    except Exception as e:  # noqa: BLE001 - a bug of ours must not stop containers unless the user asked for strictness
        signal.setitimer(signal.ITIMER_REAL, 0)
        log(f"internal error: {e.__class__.__name__}: {e}{' (strict mode)' if strict else ''}", cid=cid, error=True)
        return 1 if strict else 0
    if env.get("LXCFS_GUARD_HOOK_VERBOSE"):
        log(f"{summary} in {(time.monotonic() - t0) * 1000:.1f} ms", cid=cid)
    return 0
