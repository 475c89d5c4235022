"""The configuration shipped in the repo, checked offline against real schemas, not by eye.

- Kubernetes manifests: kubernetes-validate's JSON schemas (generated from the Kubernetes OpenAPI), strict mode
  (unknown fields rejected), for the oldest and the newest Kubernetes it ships.
- podman/CRI-O hooks.d: the oci-hooks(5) 1.0.0 format as a JSON schema (no pip package ships it), plus the
  regexes compiled as the runtimes compile them.
- runc snippet: the runtime-spec's hook schema; and it is what the runc integration test actually runs.
Beyond shape, the parts that must agree with the code do: commands parse with our own CLI, the pod-side volumes
cover exactly the files the filesystem serves, every privilege the DaemonSet needs is there.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lxcfs_guard import cli
from lxcfs_guard.config import DEFAULT_BINDS, DEFAULT_MOUNTPOINT, DEFAULT_STATE_DIR, target_for

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
OCI_STAGES = ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"]

HOOK_SCHEMA: dict[str, Any] = {  # runtime-spec config-schema.json "Hook"
    "type": "object",
    "required": ["path"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "pattern": "^/"},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {"type": "array", "items": {"type": "string", "pattern": "^[^=]+="}},
        "timeout": {"type": "integer", "minimum": 1},
    },
}
HOOKS_D_SCHEMA: dict[str, Any] = {  # oci-hooks(5), version 1.0.0
    "type": "object",
    "required": ["version", "hook", "when", "stages"],
    "additionalProperties": False,
    "properties": {
        "version": {"const": "1.0.0"},
        "hook": HOOK_SCHEMA,
        "when": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "always": {"type": "boolean"},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "commands": {"type": "array", "items": {"type": "string"}},
                "hasBindMounts": {"type": "boolean"},
            },
        },
        "stages": {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"enum": OCI_STAGES}},
    },
}
RUNC_SNIPPET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["hooks"],
    "properties": {
        "hooks": {
            "type": "object",
            "additionalProperties": False,
            "properties": {stage: {"type": "array", "items": HOOK_SCHEMA} for stage in OCI_STAGES},
        }
    },
}


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = [(f"{p.name}#{i}", d) for p in sorted(K8S.glob("*.yaml")) for i, d in enumerate(load_yaml(p))]
    assert out, "no manifests found"
    return out


def find(kind: str) -> dict[str, Any]:
    return next(d for _, d in manifests() if d["kind"] == kind)


def parses_with_our_cli(argv: list[str]) -> argparse.Namespace:
    """Parse `lxcfs-guard SUB ...` with the sub-command's own parser, as `lxcfs-guard` would."""
    assert Path(argv[0]).name == "lxcfs-guard", argv
    name = argv[1]
    assert name in cli.COMMANDS, f"{name} is not an lxcfs-guard command"
    module = importlib.import_module(cli.COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"lxcfs-guard {name}")
    getattr(module, "configure_" + name.replace("-", "_"))(parser)
    return parser.parse_args(argv[2:])


# --- Kubernetes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name, doc", manifests(), ids=[n for n, _ in manifests()])
def test_manifest_validates_strictly(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_can_fail() -> None:
    """A misspelt field or a wrong type must be caught, or the test above proves nothing."""
    ds = find("DaemonSet")
    typo = copy.deepcopy(ds)
    typo["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPropogation"] = "Bidirectional"
    with pytest.raises(kubernetes_validate.ValidationError, match="mountPropogation"):
        kubernetes_validate.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong = copy.deepcopy(ds)
    wrong["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSIONS[-1], strict=True)


def test_daemonset_has_what_the_daemon_needs() -> None:
    pod = find("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    (c,) = pod["containers"]
    assert c["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    mp = mounts[DEFAULT_MOUNTPOINT]
    assert mp["mountPropagation"] == "Bidirectional"
    assert volumes[mp["name"]]["hostPath"]["path"] == DEFAULT_MOUNTPOINT
    assert volumes[mounts[DEFAULT_STATE_DIR]["name"]]["hostPath"]["path"] == DEFAULT_STATE_DIR
    assert volumes[mounts["/sys/fs/cgroup"]["name"]]["hostPath"]["path"] == "/sys/fs/cgroup"
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    assert env == {"LXCFS_GUARD_MOUNTPOINT": DEFAULT_MOUNTPOINT, "LXCFS_GUARD_STATE_DIR": DEFAULT_STATE_DIR}
    assert c["command"][:2] == ["lxcfs-guard", "supervise"]
    assert c["livenessProbe"]["exec"]["command"][:2] == ["lxcfs-guard", "status"]


def test_daemonset_commands_parse_with_our_cli() -> None:
    (c,) = find("DaemonSet")["spec"]["template"]["spec"]["containers"]
    args = parses_with_our_cli(c["command"])
    assert args.mountpoint == DEFAULT_MOUNTPOINT
    parses_with_our_cli(c["livenessProbe"]["exec"]["command"])


def test_pod_side_volumes_cover_exactly_the_default_files() -> None:
    pod = find("Pod")["spec"]
    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    for c in pod["containers"]:
        seen = {}
        for m in c["volumeMounts"]:
            host = volumes[m["name"]]
            assert host["type"] == "File"
            assert host["path"].startswith(DEFAULT_MOUNTPOINT + "/")
            source = host["path"][len(DEFAULT_MOUNTPOINT) + 1 :]
            assert m["mountPath"] == target_for(source), m
            assert m.get("readOnly") is True
            seen[source] = m["mountPath"]
        assert sorted(seen) == sorted(DEFAULT_BINDS)


# --- OCI runtimes ------------------------------------------------------------------------------------------


def hooks_d_files() -> list[Path]:
    files = [REPO / "units" / "hooks.d" / "lxcfs-guard.json", *sorted((REPO / "deploy" / "podman").glob("*.json"))]
    assert all(f.exists() for f in files)
    return files


@pytest.mark.parametrize("path", hooks_d_files(), ids=lambda p: p.name)
def test_hooks_d_file(path: Path) -> None:
    doc = json.loads(path.read_text())
    jsonschema.validate(doc, HOOKS_D_SCHEMA)
    for key, value in doc["when"].get("annotations", {}).items():
        re.compile(key), re.compile(value)  # the runtimes match annotations as regexes
    assert set(doc["stages"]) == {"createRuntime", "poststop"}
    assert doc["hook"]["args"][:2] == ["lxcfs-guard", "oci-hook"]
    parses_with_our_cli(doc["hook"]["args"])


def test_opt_in_hooks_d_matches_the_annotation_the_hook_reads() -> None:
    from lxcfs_guard.oci.state import ANNOTATION_ENABLE

    doc = json.loads((REPO / "deploy" / "podman" / "lxcfs-guard-opt-in.json").read_text())
    ((key, value),) = doc["when"]["annotations"].items()
    assert re.search(key, ANNOTATION_ENABLE) and re.search(value, "true") and not re.search(value, "false")
    assert not re.search(key, ANNOTATION_ENABLE + ".x")


def test_hooks_d_schema_can_fail() -> None:
    doc = json.loads(hooks_d_files()[0].read_text())
    for broken in (
        {**doc, "stages": ["poststopp"]},
        {**doc, "when": {}},
        {**doc, "version": "2"},
        {**doc, "hook": {"args": ["x"]}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, HOOKS_D_SCHEMA)


def test_runc_snippet() -> None:
    doc = json.loads((REPO / "deploy" / "runc" / "config-snippet.json").read_text())
    jsonschema.validate(doc, RUNC_SNIPPET_SCHEMA)
    assert sorted(doc["hooks"]) == ["createRuntime", "poststop"]
    for entries in doc["hooks"].values():
        for hook in entries:
            parses_with_our_cli(hook["args"])


def test_daemonset_command_and_probe_run_for_real() -> None:
    """The container's command, run here with the node paths moved to a temp dir, serves; its liveness
    probe, with the env the manifest sets, passes while it does and fails once the supervisor is gone."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from lxcfs_guard.kernel.procfs import read_mountinfo
    from lxcfs_guard.testing.procs import force_unmount, stop
    from lxcfs_guard.testing.supervise import descendants

    (c,) = find("DaemonSet")["spec"]["template"]["spec"]["containers"]
    top = tempfile.mkdtemp(prefix="lxcfs-guard-ds-")
    moved = {DEFAULT_MOUNTPOINT: os.path.join(top, "mnt"), DEFAULT_STATE_DIR: os.path.join(top, "state")}
    for d in moved.values():
        os.makedirs(d)
    bindir = os.path.dirname(sys.executable)
    argv = [moved.get(a, a) for a in c["command"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXCFS_GUARD_") and k != "NOTIFY_SOCKET"}
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update({e["name"]: moved.get(e["value"], e["value"]) for e in c["env"]})
    probe = c["livenessProbe"]["exec"]["command"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, "the DaemonSet's command exited"
            assert time.monotonic() < deadline, "the liveness probe never passed"
            time.sleep(0.1)
        tree = descendants(proc.pid)
        stop(proc, signal.SIGKILL)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while subprocess.run(probe, env=env, capture_output=True, timeout=30).returncode == 0:
            assert time.monotonic() < deadline, "the liveness probe still passes with everything killed"
            time.sleep(0.1)
    finally:
        stop(proc, signal.SIGKILL)
        for pid in tree or descendants(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for m in reversed(read_mountinfo()):
            if m.mount_point.startswith(top + "/"):
                force_unmount(m.mount_point)
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.parametrize("hook_json", ["units/hooks.d/lxcfs-guard.json", "deploy/podman/lxcfs-guard-opt-in.json"])
def test_make_install_oci_hook(tmp_path: Path, hook_json: str) -> None:
    """`make install-oci-hook` writes a valid hooks.d file whose path follows PREFIX."""
    import subprocess

    p = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO),
            "install-oci-hook",
            f"DESTDIR={tmp_path}",
            "PREFIX=/opt/lg",
            f"HOOK_JSON={hook_json}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    installed = tmp_path / "etc/containers/oci/hooks.d/lxcfs-guard.json"
    doc = json.loads(installed.read_text())
    jsonschema.validate(doc, HOOKS_D_SCHEMA)
    assert doc["hook"]["path"] == "/opt/lg/bin/lxcfs-guard"
    assert doc["when"] == json.loads((REPO / hook_json).read_text())["when"]
    subprocess.run(
        ["make", "-s", "-C", str(REPO), "uninstall-oci-hook", f"DESTDIR={tmp_path}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert not installed.exists()
