"""What a remount (or attach) run did, per container, in a form a person and a script can both read.

Actions, one per container (mount namespace):
  repaired      every broken bind now serves the live connection (verified from the host)
  already_live  nothing to do: every bind of ours already points at the live connection
  refused       something is not safe to touch (a symlinked or directory target, the host's own namespace,
                a target bound to another live daemon); nothing was mounted for that target
  gone          the container is no longer there (pid exited, or reused by another process)
  failed        a syscall failed or the namespace timed out; each error names the target and the errno
"""

from __future__ import annotations

import errno as _errno
import os

from lxcfs_guard.text import printable

REPAIRED = "repaired"
ALREADY_LIVE = "already_live"
REFUSED = "refused"
GONE = "gone"
FAILED = "failed"
ACTIONS = (REPAIRED, ALREADY_LIVE, REFUSED, GONE, FAILED)
OK_ACTIONS = frozenset((REPAIRED, ALREADY_LIVE, GONE))


def encodable(text: str, encoding: str | None) -> str:
    """`text` as it can be written to a stream of `encoding`: what the encoding cannot carry (non-ASCII on
    an ASCII stdout) becomes a backslash escape instead of a UnicodeEncodeError."""
    enc = encoding or "utf-8"
    return text.encode(enc, "backslashreplace").decode(enc, "replace")


def fmt_dev(dev: int) -> str:
    """A device number as mountinfo and stat(1) show it: "0:52"."""
    return f"{os.major(dev)}:{os.minor(dev)}"


class TargetError:
    """One target that could not be (or must not be) repaired, with the errno that says why."""

    __slots__ = ("target", "errno", "message")

    def __init__(self, target: str, errno: int, message: str) -> None:
        self.target = target
        self.errno = errno
        self.message = message

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "errno": self.errno,
            "errname": _errno.errorcode.get(self.errno, str(self.errno)),
            "message": self.message,
        }

    def __str__(self) -> str:
        return f"{printable(self.target)}: {_errno.errorcode.get(self.errno, self.errno)} ({printable(self.message)})"

    def __repr__(self) -> str:
        return f"TargetError({self.target!r}, {self.errno}, {self.message!r})"


class NamespaceReport:
    """The outcome for one container: `id` is the registry id or "mntns:<inode>" for a discovered one;
    `repaired` lists the targets that now serve the live connection (or would, in a dry run)."""

    __slots__ = ("id", "pid", "mntns", "action", "repaired", "errors", "duration_ms", "detached")

    def __init__(
        self,
        id: str,
        pid: int,
        mntns: int,
        action: str,
        repaired: list[str] | None = None,
        errors: list[TargetError] | None = None,
        duration_ms: float = 0.0,
        detached: list[str] | None = None,
    ) -> None:
        self.id = id
        self.pid = pid
        self.mntns = mntns
        self.action = action
        self.repaired = repaired or []
        self.errors = errors or []
        self.duration_ms = duration_ms
        self.detached = detached or []  # stale copies of a supervisor's instance mounts, detached

    @property
    def ok(self) -> bool:
        return self.action in OK_ACTIONS

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "pid": self.pid,
            "mntns": self.mntns,
            "action": self.action,
            "repaired": list(self.repaired),
            "detached": list(self.detached),
            "errors": [e.to_dict() for e in self.errors],
            "duration_ms": round(self.duration_ms, 3),
        }

    def line(self, dry_run: bool = False) -> str:
        what = self.action.replace("_", " ")
        if dry_run and self.action == REPAIRED:
            what = "would repair"
        parts = [f"{printable(self.id):<28} pid {self.pid:<8} {what:<13}"]
        if self.repaired:
            parts.append(f"{len(self.repaired)} bind(s)")
        if self.detached:
            parts.append(f"{len(self.detached)} stale instance cop{'y' if len(self.detached) == 1 else 'ies'} detached")
        parts.append(f"{self.duration_ms:.1f} ms")
        out = "  ".join(parts)
        for e in self.errors:
            out += f"\n    {e}"
        return out

    def __repr__(self) -> str:
        return f"NamespaceReport({self.id!r}, pid={self.pid}, action={self.action!r}, errors={self.errors!r})"


class RemountReport:
    """The whole run: `ok` is False when anything is left broken (failed or refused) or the run itself
    could not start (`error`)."""

    __slots__ = (
        "live_root",
        "live_dev",
        "fstype",
        "mode",
        "dry_run",
        "namespaces",
        "warnings",
        "error",
        "duration_ms",
        "phases_ms",
        "left_behind",
    )

    def __init__(self, live_root: str, fstype: str, dry_run: bool = False) -> None:
        self.live_root = live_root
        self.live_dev: int | None = None
        self.fstype = fstype
        self.mode = ""  # "beneath" or "detach-move"
        self.dry_run = dry_run
        self.namespaces: list[NamespaceReport] = []
        self.warnings: list[str] = []
        self.error: str | None = None
        self.duration_ms = 0.0
        self.phases_ms: dict[str, float] = {}  # where the time went: discover, probe, repair
        self.left_behind: list[int] = []  # our children stuck in the kernel (D state), not waited for

    @property
    def ok(self) -> bool:
        return self.error is None and all(ns.ok for ns in self.namespaces)

    def broken(self) -> list[dict[str, object]]:
        """What is left broken, and why: one entry per target of a failed or refused namespace (the exit
        code is non-zero exactly when this is non-empty or the run could not start)."""
        out: list[dict[str, object]] = []
        for ns in self.namespaces:
            if not ns.ok:
                for e in ns.errors or [TargetError("-", _errno.EIO, ns.action)]:
                    out.append({"id": ns.id, "pid": ns.pid, "action": ns.action, **e.to_dict()})
        return out

    def count(self, action: str) -> int:
        return sum(1 for ns in self.namespaces if ns.action == action)

    def to_dict(self) -> dict[str, object]:
        dev = self.live_dev
        return {
            "ok": self.ok,
            "live_root": self.live_root,
            "fstype": self.fstype,
            "live_dev": None if dev is None else fmt_dev(dev),
            "mode": self.mode,
            "dry_run": self.dry_run,
            "error": self.error,
            "warnings": list(self.warnings),
            "counts": {a: self.count(a) for a in ACTIONS},
            "broken": self.broken(),
            "left_behind": list(self.left_behind),
            "namespaces": [ns.to_dict() for ns in self.namespaces],
            "duration_ms": round(self.duration_ms, 3),
            "phases_ms": {k: round(v, 3) for k, v in self.phases_ms.items()},
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=1)

    def text(self) -> str:
        lines = [f"warning: {printable(w)}" for w in self.warnings]
        if self.error:
            lines.append(f"error: {printable(self.error)}")
        lines += [ns.line(self.dry_run) for ns in self.namespaces]
        counts = ", ".join(f"{self.count(a)} {a.replace('_', ' ')}" for a in ACTIONS if self.count(a))
        lines.append(
            f"{len(self.namespaces)} container(s){': ' + counts if counts else ''}"
            f"{' (dry run)' if self.dry_run else ''} in {self.duration_ms:.1f} ms"
            f"{' via ' + self.mode if self.mode else ''}"
        )
        return "\n".join(lines)
