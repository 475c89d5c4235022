"""The runc driver's pure parts: the hooks object built from the shipped snippet, and the config changes."""

from __future__ import annotations

import json
from pathlib import Path

from lxcfs_guard.oci.runc import guard_hooks

SNIPPET = Path(__file__).resolve().parents[2] / "deploy" / "runc" / "config-snippet.json"


def test_guard_hooks_keeps_the_snippet_and_swaps_only_the_binary() -> None:
    snippet = json.loads(SNIPPET.read_text())
    hooks = guard_hooks("/opt/x/lxcfs-guard", ["--state-dir", "/s"], snippet, env={"A": "1"})
    assert sorted(hooks) == sorted(snippet["hooks"])
    for stage, entries in hooks.items():
        (shipped,) = snippet["hooks"][stage]
        (h,) = entries
        assert h["path"] == "/opt/x/lxcfs-guard"
        assert h["args"] == shipped["args"] + ["--state-dir", "/s"]
        assert h["timeout"] == shipped["timeout"]
        assert h["env"] == ["A=1"]
    assert snippet == json.loads(SNIPPET.read_text())  # not mutated


def test_guard_hooks_default_without_snippet() -> None:
    hooks = guard_hooks("/b", [])
    assert hooks == {s: [{"path": "/b", "args": ["lxcfs-guard", "oci-hook"]}] for s in ("createRuntime", "poststop")}
