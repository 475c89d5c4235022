"""The entry point: every listed command resolves to a module that has its hooks, and none of the fast-path
commands pulls in trio, pyfuse3 or pyroute2."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from lxcfs_guard.cli import COMMANDS

FAST_PATH = ("remount", "attach", "register", "unregister", "list", "status", "oci-hook")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_configure_and_run(name: str) -> None:
    module = importlib.import_module(COMMANDS[name][0])
    attr = name.replace("-", "_")
    assert callable(getattr(module, f"configure_{attr}"))
    assert callable(getattr(module, f"run_{attr}"))


@pytest.mark.parametrize("name", FAST_PATH)
def test_fast_path_commands_import_no_heavy_library(name: str) -> None:
    code = (
        "import sys, importlib; from lxcfs_guard.cli import COMMANDS;"
        f"importlib.import_module(COMMANDS[{name!r}][0]);"
        "print(','.join(m for m in ('trio','pyfuse3','pyroute2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{name} imports {out}"


def test_unknown_command_is_a_usage_error() -> None:
    r = subprocess.run([sys.executable, "-m", "lxcfs_guard.cli", "no-such"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_serve_imports_pyfuse3_without_what_it_never_uses() -> None:
    # every module imported before the workers fork is resident in three processes: trio (pyfuse3's
    # scheduler), importlib.metadata (its version lookup) and hashlib (OpenSSL) are not used to serve
    code = (
        "import sys; from lxcfs_guard.fs import syncloop; p = syncloop.import_pyfuse3();"
        "from lxcfs_guard.fs import daemon, connection, worker, loadavg, operations;"
        "print(p.__version__);"
        "print(','.join(m for m in ('trio','importlib.metadata','email','hashlib','_hashlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0][:1].isdigit(), f"pyfuse3's version is {out[0]!r}"
    assert out[1] == "", f"serve imports {out[1]}"
