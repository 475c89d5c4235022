"""The registry file: round trip, schema, corruption handling, atomic writes, locking helpers."""

from __future__ import annotations

import errno
import json
import os

import pytest

from lxcfs_guard.remount.registry import SCHEMA, Bind, Entry, Registry, RegistryError, dump, parse


def sample() -> dict[str, Entry]:
    return {
        "b": Entry("b", 20, 200, 4026532001, [("proc/meminfo", "/proc/meminfo", "ro,nosuid,nodev")]),
        "a": Entry("a", 10, 100, 4026532000, [Bind("proc/stat", "proc/stat")]),
    }


def test_round_trip_and_stable_text() -> None:
    text = dump(sample())
    assert parse(text) == sample()
    assert dump(parse(text)) == text
    doc = json.loads(text)
    assert doc["schema"] == SCHEMA and list(doc["containers"]) == ["a", "b"]
    assert doc["containers"]["a"]["binds"] == [{"source": "proc/stat", "target": "/proc/stat", "flags": ""}]


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "not JSON"),
        ('{"schema": 99, "containers": {}}', "schema 99"),
        ('{"schema": 1}', "containers"),
    ],
)
def test_bad_files_are_rejected_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(RegistryError, match=words):
        parse(text)


def test_bind_from_tuple_and_dict() -> None:
    assert Bind.from_obj(("proc/meminfo", "/proc/meminfo")) == Bind("proc/meminfo", "/proc/meminfo", "")
    assert Bind.from_obj({"source": "/proc/x", "target": "proc/x", "flags": "ro"}) == Bind("proc/x", "/proc/x", "ro")
    with pytest.raises(ValueError):
        Bind.from_obj(("only-one",))


def test_add_remove_persist(tmp_path) -> None:
    reg = Registry(str(tmp_path / "state"))  # the directory is created on first write
    assert reg.load() == {}
    for e in sample().values():
        reg.add(e)
    assert Registry(reg.state_dir).load() == sample()
    assert reg.remove("a") is True and reg.remove("a") is False
    assert set(Registry(reg.state_dir).load()) == {"b"}
    assert sorted(os.listdir(reg.state_dir)) == ["registry.json", "registry.lock"]  # no temp file left


def test_remove_if_keeps_a_container_registered_again_under_the_same_id(tmp_path) -> None:
    reg = Registry(str(tmp_path))
    for e in sample().values():
        reg.add(e)
    reg.add(Entry("b", 21, 201, 4026532009, []))  # "b" restarted meanwhile
    assert reg.remove_if({"a": (10, 100), "b": (20, 200)}) == ["a"]
    assert set(Registry(str(tmp_path)).load()) == {"b"}


def test_corrupt_file_is_set_aside_with_a_clear_message(tmp_path) -> None:
    path = tmp_path / "registry.json"
    path.write_text("{garbage")
    reg = Registry(str(tmp_path))
    assert reg.load() == {}
    assert reg.problem and "corrupt" in reg.problem and "not JSON" in reg.problem and "discovery only" in reg.problem
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("registry.json.corrupt-")]
    assert aside.read_text() == "{garbage" and not path.exists()
    reg.add(Entry("c", 1, 2, 3, []))  # and the registry works again
    assert set(Registry(str(tmp_path)).load()) == {"c"}


def test_add_container_refuses_our_own_namespace(tmp_path) -> None:
    with pytest.raises(OSError) as info:
        Registry(str(tmp_path)).add_container("me", os.getpid(), [])
    assert info.value.errno == errno.EPERM
    assert not (tmp_path / "registry.json").exists()


def test_a_bad_entry_is_set_aside_alone_and_the_others_kept(tmp_path) -> None:
    """L5: one malformed entry used to set the whole registry aside (two valid entries lost, silently)."""
    reg = Registry(str(tmp_path))
    for e in sample().values():
        reg.add(e)
    doc = json.loads((tmp_path / "registry.json").read_text())
    doc["containers"]["bad"] = {"pid": "x"}
    doc["containers"]["worse"] = [1, 2]
    (tmp_path / "registry.json").write_text(json.dumps(doc))
    fresh = Registry(str(tmp_path))
    assert fresh.load() == sample()
    assert fresh.problem and "'bad'" in fresh.problem and "'worse'" in fresh.problem and "kept" in fresh.problem
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("registry.json.rejected-")]
    assert set(json.loads(aside.read_text())["containers"]) == {"bad", "worse"}
    assert set(json.loads((tmp_path / "registry.json").read_text())["containers"]) == {"a", "b"}


def test_a_corrupt_file_is_moved_aside_only_under_the_lock(tmp_path) -> None:
    """L5: `remount` moved a corrupt file aside without the lock (racing a writer that holds it)."""
    import fcntl

    (tmp_path / "registry.json").write_text("{garbage")
    Registry(str(tmp_path)).load()  # creates the private directory and lock file, moves this one aside
    (tmp_path / "registry.json").write_text("{garbage")
    holder = os.open(tmp_path / "registry.lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another writer is in its read-modify-write
    try:
        reg = Registry(str(tmp_path), lock_timeout=0.2)
        assert reg.load() == {}
        assert reg.problem and "left in place" in reg.problem
        assert (tmp_path / "registry.json").read_text() == "{garbage"  # not moved under the writer's feet
    finally:
        os.close(holder)
