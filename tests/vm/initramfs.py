"""Find the installed Debian kernel and build the VM's initramfs: busybox-static, the modules the 9p root,
the overlay, the scratch disk and FUSE need, and stage 1 (`init.sh`) as /init.

The archive is written directly in the `newc` cpio format (no staging directory, nothing to clean up) and cached
under `tests/vm/.cache`, keyed by the kernel version and a digest of everything that goes into it, so a changed
`init.sh` or a kernel upgrade rebuilds it and concurrent runs never see a half-written file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE_DIR = HERE / ".cache"
INIT_SCRIPT = HERE / "init.sh"
BUSYBOX = "/bin/busybox"
# Leaf modules; their dependencies come from `modprobe --show-depends`, in load order.
MODULES = ("virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay", "fuse")


class VMSetupError(RuntimeError):
    """Something the VM needs is missing on the host (kernel, busybox, modules)."""


@dataclass(frozen=True)
class Kernel:
    version: str
    image: str


def installed_kernel() -> Kernel:
    """The kernel `linux-image-amd64` pulls in, else the newest /boot/vmlinuz-* that has its modules."""
    versions: list[str] = []
    try:
        depends = subprocess.run(
            ["dpkg-query", "-W", "-f=${Depends}", "linux-image-amd64"], capture_output=True, text=True, check=True
        ).stdout
        versions += [v.removesuffix("-unsigned") for v in re.findall(r"linux-image-([^\s,|()]+)", depends)]
    except (OSError, subprocess.CalledProcessError):
        pass
    boot = sorted(Path("/boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    versions += [p.name.removeprefix("vmlinuz-") for p in boot]
    for version in versions:
        image = f"/boot/vmlinuz-{version}"
        if os.path.exists(image) and os.path.exists(f"/lib/modules/{version}/modules.dep"):
            return Kernel(version, image)
    raise VMSetupError("no kernel with modules in /boot (apt-get install --no-install-recommends linux-image-amd64)")


def parse_show_depends(text: str) -> list[tuple[str, str]]:
    """`modprobe --show-depends` output -> [(module file, options)], skipping built-ins."""
    out = []
    for line in text.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2 and parts[0] == "insmod":
            out.append((parts[1], parts[2].strip() if len(parts) > 2 else ""))
    return out


def module_load_order(version: str, names: tuple[str, ...] = MODULES) -> list[tuple[str, str]]:
    """Every module file `names` need, each once, dependencies first."""
    seen: dict[str, str] = {}
    for name in names:
        res = subprocess.run(["modprobe", "-S", version, "--show-depends", name], capture_output=True, text=True)
        if res.returncode != 0:
            raise VMSetupError(f"modprobe -S {version} --show-depends {name}: {res.stderr.strip()}")
        for path, opts in parse_show_depends(res.stdout):
            seen.setdefault(path, opts)
    return list(seen.items())


def _module_bytes(path: str) -> bytes:
    """The module's ELF; compressed modules are unpacked here because busybox insmod cannot."""
    data = Path(path).read_bytes()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
    if path.endswith(".gz"):
        return gzip.decompress(data)
    return data


class NewcWriter:
    """The `newc` (SVR4, no CRC) cpio format the kernel unpacks an initramfs from."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_archive(modules: list[tuple[str, str]], init: bytes, busybox: bytes) -> bytes:
    """The initramfs content: /init, /bin/busybox, /modules/NN-name.ko and /modules/load.list in load order."""
    w = NewcWriter()
    for d in ("bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot", "share"):
        w.directory(d)
    w.file("init", init, 0o755)
    w.file("bin/busybox", busybox, 0o755)
    lines = []
    for i, (path, opts) in enumerate(modules):
        base = os.path.basename(path).split(".ko")[0]
        name = f"modules/{i:02d}-{base}.ko"
        w.file(name, _module_bytes(path))
        lines.append(f"/{name} {opts}".rstrip())
    w.file("modules/load.list", ("\n".join(lines) + "\n").encode())
    return gzip.compress(w.finish(), compresslevel=6, mtime=0)


def ensure_initramfs(kernel: Kernel, cache_dir: Path = CACHE_DIR) -> Path:
    """The cached initramfs for `kernel`, built (atomically) if missing or stale."""
    if not os.access(BUSYBOX, os.X_OK):
        raise VMSetupError(f"{BUSYBOX} missing (apt-get install busybox-static)")
    modules = module_load_order(kernel.version)
    init = INIT_SCRIPT.read_bytes()
    h = hashlib.sha256(init)
    for path, opts in modules:
        st = os.stat(path)
        h.update(f"{path}\0{opts}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    st = os.stat(BUSYBOX)
    h.update(f"busybox\0{st.st_size}\0{st.st_mtime_ns}".encode())
    target = cache_dir / f"initramfs-{kernel.version}-{h.hexdigest()[:12]}.cpio.gz"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = build_archive(modules, init, Path(BUSYBOX).read_bytes())
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    # Older builds for the same kernel are stale now; leave other kernels' alone.
    for old in cache_dir.glob(f"initramfs-{kernel.version}-*.cpio.gz"):
        if old != target:
            old.unlink(missing_ok=True)
    return target
