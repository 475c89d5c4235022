"""LXCFS 7.0.0, the reference for cgroup v2, built from the source tarball in shared/ (never committed here).

`ensure_lxcfs7()` builds it once with meson + ninja (libfuse3-dev) into a directory OUTSIDE the checkout,
under /var/cache by default, so the v2 VM, which sees the host's root read-only over 9p, finds the binary
and LXCFS's own test scripts at the same path. `make test-v2` calls it before booting; a missing tarball or
build tool is an error that names what is missing, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

VERSION = "7.0.0"
REPO = Path(__file__).resolve().parents[2]
# shared/ sits beside the checkout (CI, the lead's clone); a helper's worktree finds it at /work/shared
TARBALL_CANDIDATES = (REPO.parent / "shared/reference", Path("/work/shared/reference"))
DEFAULT_ROOT = Path("/var/cache/lxcfs-guard")
BUILD_TOOLS = ("meson", "ninja", "cc")


class Lxcfs7Missing(RuntimeError):
    pass


def tarball() -> Path:
    env = os.environ.get("LXCFS7_TARBALL")
    candidates = [Path(env)] if env else [d / f"lxcfs-{VERSION}.tar.gz" for d in TARBALL_CANDIDATES]
    for path in candidates:
        if path.is_file():
            return path
    raise Lxcfs7Missing(
        f"LXCFS {VERSION} source not found (looked at {', '.join(map(str, candidates))}; set LXCFS7_TARBALL)"
    )


def build_dir(root: Path | None = None) -> Path:
    root = root or Path(os.environ.get("LXCFS7_ROOT", DEFAULT_ROOT))
    return root / f"lxcfs-{VERSION}-build"


def ensure_lxcfs7(root: Path | None = None) -> Path:
    """The build directory holding `lxcfs`, `liblxcfs.so` and `tests/`; built if missing."""
    out = build_dir(root)
    if (out / "lxcfs").is_file() and (out / "liblxcfs.so").is_file() and (out / "tests/test_proc").is_file():
        return out
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    if missing:
        raise Lxcfs7Missing(
            f"cannot build LXCFS {VERSION}: {' '.join(missing)} missing "
            "(apt-get install meson ninja-build gcc libfuse3-dev python3-jinja2)"
        )
    src_parent = out.parent
    src_parent.mkdir(parents=True, exist_ok=True)
    src = src_parent / f"lxcfs-{VERSION}"
    if not (src / "meson.build").is_file():
        with tarfile.open(tarball()) as tf:
            tf.extractall(src_parent, filter="data")
    if out.exists():
        shutil.rmtree(out)
    log = src_parent / f"lxcfs-{VERSION}-build.log"
    with open(log, "wb") as f:
        for cmd in (
            ["meson", "setup", str(out), "-Dtests=true", "-Ddocs=false", "-Dinit-script=[]"],
            ["ninja", "-C", str(out)],
        ):
            r = subprocess.run(cmd, cwd=src, stdout=f, stderr=subprocess.STDOUT, timeout=900)
            if r.returncode != 0:
                raise Lxcfs7Missing(f"building LXCFS {VERSION} failed ({' '.join(cmd)}); see {log}")
    return out


if __name__ == "__main__":  # python -m tests.support.lxcfs7
    print(ensure_lxcfs7())
