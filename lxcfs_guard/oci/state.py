"""What an OCI hook is told, parsed without touching the kernel: the state JSON on stdin, the bundle's
config.json, the options (strict, files, opt-out) from the hook's environment and the container's
annotations, and the plan of which files to bind.

Kept pure (json and os.path only) so every rule here has a fast unit test with fixture data, and so the
hook, which runs on every container start, imports almost nothing.

Facts about runc 1.1.5 this relies on (checked with a probe hook on every stage):
- prestart and createRuntime run in the runtime's (host) namespaces with cwd = the bundle; `status` is
  "creating", `pid` is the container's init (`runc init`, which later execs the process, so pid and start
  time stay valid), and the container's mount namespace already holds the rootfs at its host path with
  /proc, /sys, /dev mounted under it, not yet pivoted.
- createContainer/startContainer run inside the container (its binaries, its /proc): no use to us.
- poststop gets `status` "stopped" and no pid; cwd is the caller's, not the bundle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxcfs_guard.config import ALL_FILES, DEFAULT_BINDS, target_for

ANNOTATION_PREFIX = "io.lxcfs-guard."
ANNOTATION_STRICT = ANNOTATION_PREFIX + "strict"  # "true": a failed bind fails the container start
ANNOTATION_ENABLE = ANNOTATION_PREFIX + "enable"  # "false": leave this container alone (opt-in hooks.d uses "true")
ANNOTATION_FILES = ANNOTATION_PREFIX + "files"  # "proc/meminfo,proc/cpuinfo": bind only these
ENV_STRICT = "LXCFS_GUARD_STRICT"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

CREATE = "create"
STOP = "stop"


class HookInputError(ValueError):
    """The hook was given something it cannot act on (bad stdin, unreadable config.json, bad option)."""


@dataclass(frozen=True, slots=True)
class HookState:
    """The OCI runtime state the runtime writes to a hook's stdin (runtime-spec "State")."""

    id: str
    status: str
    bundle: str
    pid: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BundleConfig:
    """The parts of the bundle's config.json the hook needs."""

    rootfs: str  # absolute: root.path resolved against the bundle
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Options:
    strict: bool = False
    enabled: bool = True
    files: tuple[str, ...] = DEFAULT_BINDS


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise HookInputError(f"{what}: annotations must be an object of strings")
    return dict(value)


def _load_object(text: str | bytes, what: str, show: bool = True) -> dict[str, Any]:
    """`show`: quote the start of the text in the error (stdin, which the runtime wrote), never a file's
    (config.json may be a link to a file the caller must not see)."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        if not show:
            raise HookInputError(f"{what} is not JSON ({e.__class__.__name__})") from None
        snippet = (text[:60] if isinstance(text, str) else text[:60].decode("utf-8", "replace")).strip()
        raise HookInputError(f"{what} is not JSON ({e.__class__.__name__}: {e}); got {snippet!r}") from None
    if not isinstance(data, dict):
        raise HookInputError(f"{what} is not a JSON object; got {type(data).__name__}")
    return data


def parse_state(text: str | bytes) -> HookState:
    """Parse the state JSON a runtime passes on a hook's stdin; raise HookInputError saying what is wrong."""
    what = "OCI state on stdin"
    if not text or not text.strip():
        raise HookInputError(f"{what} is empty: run me as an OCI hook (the runtime writes the state to stdin)")
    data = _load_object(text, what)
    cid, status, bundle = data.get("id"), data.get("status"), data.get("bundle")
    for name, value in (("id", cid), ("status", status), ("bundle", bundle)):
        if not isinstance(value, str) or not value:
            raise HookInputError(f"{what} lacks a string {name!r}: {json.dumps(data)[:200]}")
    assert isinstance(cid, str) and isinstance(status, str) and isinstance(bundle, str)
    if not os.path.isabs(bundle):
        raise HookInputError(f"{what}: bundle must be an absolute path, got {bundle!r}")
    pid = data.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid < 0):
        raise HookInputError(f"{what}: pid must be a non-negative integer, got {pid!r}")
    return HookState(
        id=cid, status=status, bundle=bundle, pid=pid or None, annotations=_str_map(data.get("annotations"), what)
    )


def parse_config(text: str | bytes, bundle: str) -> BundleConfig:
    """Parse a bundle's config.json: the rootfs (root.path, relative to the bundle unless absolute)."""
    what = f"{bundle}/config.json"
    data = _load_object(text, what, show=False)
    root = data.get("root")
    path = root.get("path") if isinstance(root, dict) else None
    if not isinstance(path, str) or not path:
        raise HookInputError(f"{what} has no root.path")
    return BundleConfig(
        rootfs=os.path.normpath(os.path.join(bundle, path)), annotations=_str_map(data.get("annotations"), what)
    )


def stage_of(state: HookState, explicit: str | None = None) -> str:
    """CREATE or STOP. One hooks.d entry serves several stages with the same argv, so the stage is read
    from the status unless given: "creating" (prestart/createRuntime) and "created"/"running"
    (poststart, a late call) bind; "stopped" (poststop) forgets."""
    if explicit:
        if explicit in ("prestart", "createRuntime", "poststart", CREATE):
            return CREATE
        if explicit in ("poststop", STOP):
            return STOP
        raise HookInputError(f"unsupported stage {explicit!r}: use createRuntime (or prestart) and poststop")
    if state.status in ("creating", "created", "running"):
        return CREATE
    if state.status == "stopped":
        return STOP
    raise HookInputError(f"unexpected container status {state.status!r} (expected creating or stopped)")


def _flag(value: str | None, name: str) -> bool | None:
    if value is None or value == "":
        return None
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise HookInputError(f"{name}={value!r}: expected true or false")


def parse_files(value: str) -> tuple[str, ...]:
    """ "meminfo, proc/cpuinfo,sys/devices/system/cpu/online" -> the canonical sources, order kept."""
    out: list[str] = []
    for item in (x.strip().strip("/") for x in value.split(",")):
        if not item:
            continue
        match = [f for f in ALL_FILES if f == item or f.rsplit("/", 1)[-1] == item]
        if not match:
            raise HookInputError(f"{ANNOTATION_FILES}: unknown file {item!r} (known: {', '.join(ALL_FILES)})")
        if match[0] not in out:
            out.append(match[0])
    if not out:
        raise HookInputError(f"{ANNOTATION_FILES} is empty")
    return tuple(out)


def options_from(env: Mapping[str, str], *annotation_maps: Mapping[str, str], strict: bool = False) -> Options:
    """Options from the hook's environment and the annotations (state's, then config.json's; later wins).

    Strict is on if the hook was told so (`--strict`, LXCFS_GUARD_STRICT=1) or the container asks for it.
    A malformed strict value counts as strict, so a typo never silently weakens what the user asked for.
    """
    ann: dict[str, str] = {}
    for m in annotation_maps:
        ann.update(m)
    try:
        env_strict = _flag(env.get(ENV_STRICT), ENV_STRICT)
    except HookInputError:
        env_strict = True
    try:
        ann_strict = _flag(ann.get(ANNOTATION_STRICT), ANNOTATION_STRICT)
    except HookInputError:
        ann_strict = True
    is_strict = bool(strict or env_strict or ann_strict)
    enabled = _flag(ann.get(ANNOTATION_ENABLE), ANNOTATION_ENABLE)
    files = parse_files(ann[ANNOTATION_FILES]) if ann.get(ANNOTATION_FILES) else DEFAULT_BINDS
    return Options(strict=is_strict, enabled=enabled is not False, files=files)


def strict_hint(env: Mapping[str, str], annotation_maps: Iterable[Mapping[str, str]] = ()) -> bool:
    """Best-effort strictness when the input itself is broken (garbage stdin): env and whatever parsed."""
    try:
        return options_from(env, *annotation_maps).strict
    except HookInputError:
        return True


@dataclass(frozen=True, slots=True)
class BindPlan:
    binds: tuple[tuple[str, str], ...]  # (source relative to the mountpoint, target inside the container)
    missing: tuple[str, ...]  # targets the container does not have (skipped)


def plan_binds(files: Sequence[str], target_exists: Callable[[str], bool]) -> BindPlan:
    """Bind each file over its usual target, skipping targets the container lacks (a rootfs without /sys,
    a minimal /proc): binding would need creating files in someone else's rootfs, which we never do."""
    binds, missing = [], []
    for source in files:
        target = target_for(source)
        if target_exists(target):
            binds.append((source, target))
        else:
            missing.append(target)
    return BindPlan(tuple(binds), tuple(missing))
