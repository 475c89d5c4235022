"""The OCI hook's pure side: state JSON, config.json, options and the bind plan, on fixtures captured from
runc 1.1.5 (tests/unit/fixtures/oci: a createRuntime and a poststop state, and the bundle's config.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lxcfs_guard.config import DEFAULT_BINDS
from lxcfs_guard.oci.state import (
    CREATE,
    STOP,
    HookInputError,
    options_from,
    parse_config,
    parse_files,
    parse_state,
    plan_binds,
    stage_of,
    strict_hint,
)

FIX = Path(__file__).parent / "fixtures" / "oci"
BUNDLE = "/run/bundles/lgtest-777beba1a126"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def test_runc_create_runtime_state() -> None:
    st = parse_state(fixture("runc-createRuntime-state.json"))
    assert (st.id, st.status, st.pid, st.bundle) == ("lgtest-777beba1a126", "creating", 945, BUNDLE)
    assert st.annotations == {"io.lxcfs-guard.strict": "true"}
    assert stage_of(st) == CREATE


def test_runc_poststop_state_has_no_pid() -> None:
    st = parse_state(fixture("runc-poststop-state.json").encode())
    assert st.pid is None and st.status == "stopped"
    assert stage_of(st) == STOP


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("hello world", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"id": "x", "status": "creating"}', "'bundle'"),
        ('{"id": 5, "status": "creating", "bundle": "/b"}', "'id'"),
        ('{"id": "x", "status": "creating", "bundle": "rel/path"}', "absolute"),
        ('{"id": "x", "status": "creating", "bundle": "/b", "pid": "12"}', "pid"),
        ('{"id": "x", "status": "creating", "bundle": "/b", "pid": true}', "pid"),
        ('{"id": "x", "status": "creating", "bundle": "/b", "annotations": {"a": 1}}', "annotations"),
    ],
)
def test_bad_state_says_what_is_wrong(text: str | bytes, words: str) -> None:
    with pytest.raises(HookInputError, match=words):
        parse_state(text)


def test_stage_from_status_and_explicit() -> None:
    st = parse_state('{"id": "x", "status": "running", "bundle": "/b", "pid": 3}')
    assert stage_of(st) == CREATE
    assert stage_of(st, "poststop") == STOP
    assert stage_of(st, "createRuntime") == CREATE
    with pytest.raises(HookInputError, match="stage"):
        stage_of(st, "createContainer")
    with pytest.raises(HookInputError, match="paused"):
        stage_of(parse_state('{"id": "x", "status": "paused", "bundle": "/b"}'))


def test_config_root_path_is_relative_to_the_bundle() -> None:
    cfg = parse_config(fixture("runc-config.json"), BUNDLE)
    assert cfg.rootfs == f"{BUNDLE}/rootfs"
    assert cfg.annotations["io.lxcfs-guard.strict"] == "true"
    absolute = json.dumps({"root": {"path": "/var/lib/containers/x/merged/"}})
    assert parse_config(absolute, BUNDLE).rootfs == "/var/lib/containers/x/merged"
    dotted = json.dumps({"root": {"path": "../shared/rootfs"}})
    assert parse_config(dotted, BUNDLE).rootfs == "/run/bundles/shared/rootfs"


@pytest.mark.parametrize("text", ['{"root": {}}', '{"process": {}}', '{"root": {"path": ""}}', "nope"])
def test_config_without_root_path_is_an_error(text: str) -> None:
    with pytest.raises(HookInputError):
        parse_config(text, BUNDLE)


def test_options_default_and_strict_sources() -> None:
    assert options_from({}) == options_from({}, {})
    o = options_from({})
    assert (o.strict, o.enabled, o.files) == (False, True, DEFAULT_BINDS)
    assert options_from({"LXCFS_GUARD_STRICT": "1"}).strict
    assert not options_from({"LXCFS_GUARD_STRICT": "0"}).strict
    assert options_from({}, {"io.lxcfs-guard.strict": "TRUE"}).strict
    assert options_from({}, strict=True).strict
    # a typo must not silently weaken what was asked for
    assert options_from({"LXCFS_GUARD_STRICT": "yes please"}).strict
    assert options_from({}, {"io.lxcfs-guard.strict": "ture"}).strict
    # later annotation maps (config.json) win over earlier ones (state)
    assert not options_from({}, {"io.lxcfs-guard.strict": "true"}, {"io.lxcfs-guard.strict": "false"}).strict


def test_options_enable_and_files() -> None:
    assert not options_from({}, {"io.lxcfs-guard.enable": "false"}).enabled
    assert options_from({}, {"io.lxcfs-guard.enable": "true"}).enabled
    with pytest.raises(HookInputError, match="enable"):
        options_from({}, {"io.lxcfs-guard.enable": "maybe"})
    o = options_from({}, {"io.lxcfs-guard.files": "meminfo, proc/cpuinfo,online,meminfo"})
    assert o.files == ("proc/meminfo", "proc/cpuinfo", "sys/devices/system/cpu/online")


@pytest.mark.parametrize("value, words", [("meminfo,passwd", "passwd"), (" , ", "empty")])
def test_bad_files_annotation(value: str, words: str) -> None:
    with pytest.raises(HookInputError, match=words):
        parse_files(value)


def test_strict_hint_survives_broken_input() -> None:
    assert strict_hint({"LXCFS_GUARD_STRICT": "1"})
    assert not strict_hint({})
    assert strict_hint({}, [{"io.lxcfs-guard.files": "bogus"}])  # unparseable options: fail safe


def test_plan_skips_missing_targets() -> None:
    present = {"/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/uptime", "/proc/loadavg", "/proc/diskstats"}
    plan = plan_binds(DEFAULT_BINDS, present.__contains__)
    assert plan.binds == (
        ("proc/cpuinfo", "/proc/cpuinfo"),
        ("proc/diskstats", "/proc/diskstats"),
        ("proc/loadavg", "/proc/loadavg"),
        ("proc/meminfo", "/proc/meminfo"),
        ("proc/stat", "/proc/stat"),
        ("proc/uptime", "/proc/uptime"),
    )
    assert plan.missing == ("/proc/swaps", "/sys/devices/system/cpu/online")
    assert plan_binds(DEFAULT_BINDS, lambda t: False).binds == ()
