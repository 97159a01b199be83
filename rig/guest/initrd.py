"""Build the guest's freestanding ``init`` and the initrd image that carries it.

The image is **ext2 made by genext2fs**, because:

* genext2fs writes ext2 with 128-byte inodes and no feature flags at all, which
  the 2.4.20 ext2 driver mounts; ``dumpe2fs -h`` on the output shows
  ``Filesystem features: (none)`` and ``Inode size: 128`` (revision 1, which
  2.4 reads: it is the feature flags and larger inodes it cannot handle);
* its device table (``-D``) creates ``/dev/console`` and friends as real
  character nodes without root privileges or mknod.  romfs (genromfs) could
  hold them only through its special-file naming tricks, and the kernel opens
  ``/dev/console`` for init before init runs.

Init still creates ``/dev/console`` itself if the node is missing, so a
hand-made image without nodes also works.

Outputs go to ``out_dir`` (default ``cache_dir("guest", <digest>)``) next to a
stamp of the digest, which covers the init sources, the compiler flags, the gcc
version and the image layout; nothing is rebuilt while those stay the same.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from rig.errors import RigError
from rig.paths import cache_dir
from rig.tools import gcc_version, require, require_gcc_m32

INIT_SOURCE_DIR = Path(__file__).resolve().parent / "init"

# A 2.4 kernel cannot run today's libcs, so init is freestanding: raw int $0x80
# system calls, its own _start, libgcc only for 64-bit division.  i686 without
# SSE/MMX: the guest kernel may not enable SSE state for user processes.
CFLAGS: tuple[str, ...] = (
    "-m32", "-march=i686", "-mno-sse", "-mno-mmx",
    "-static", "-nostdlib", "-ffreestanding", "-fno-pie", "-no-pie",
    "-O2", "-fno-stack-protector", "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables", "-Wall", "-Wextra", "-Werror",
    "-Wl,--build-id=none", "-Wl,-z,noseparate-code",
)

# 1 KiB blocks: room for the workload's files (a 300 kB one among them) and
# well under the kernel's 4 MiB ramdisk (CONFIG_BLK_DEV_RAM_SIZE=4096)
IMAGE_BLOCKS = 2048
IMAGE_INODES = 256

# genext2fs device table: name type mode uid gid major minor start inc count
DEVICE_TABLE = """\
/dev        d 755 0 0 -  - - - -
/proc       d 555 0 0 -  - - - -
/mnt        d 755 0 0 -  - - - -
/dev/console c 600 0 0 5  1 - - -
/dev/ttyS0  c 600 0 0 4 64 - - -
/dev/null   c 666 0 0 1  3 - - -
/dev/ptmx   c 666 0 0 5  2 - - -
/dev/pts    d 755 0 0 -  - - - -
"""


def init_sources() -> list[Path]:
    sources = sorted(INIT_SOURCE_DIR.glob("*.c")) + sorted(INIT_SOURCE_DIR.glob("*.h"))
    if not any(path.suffix == ".c" for path in sources):
        raise RigError(f"no init sources found in {INIT_SOURCE_DIR}",
                       hint="the rig checkout is incomplete; restore rig/guest/init/")
    return sources


def initrd_inputs_digest() -> str:
    """Hash of everything the init binary and the image are made from."""
    digest = hashlib.sha256()
    for path in init_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(" ".join(CFLAGS).encode() + b"\0")
    digest.update(gcc_version().encode() + b"\0")
    digest.update(f"{DEVICE_TABLE}{IMAGE_BLOCKS}/{IMAGE_INODES}".encode())
    return digest.hexdigest()[:16]


def _is_current(output: Path, stamp: Path, digest: str) -> bool:
    return output.is_file() and stamp.is_file() and stamp.read_text().strip() == digest


def _cached_build(out_dir: Path | None, name: str, make: Callable[[Path], None]) -> Path:
    """``out_dir/name``, remade by ``make(built)`` unless its digest stamp is current.

    ``make`` writes ``built`` in a fresh scratch directory (which it may also use); the
    result is renamed into place within ``out_dir``, so a concurrent reader never sees
    half a file.
    """
    digest = initrd_inputs_digest()
    out_dir = out_dir or cache_dir("guest", digest)
    out_dir.mkdir(parents=True, exist_ok=True)
    target, stamp = out_dir / name, out_dir / f"{Path(name).stem}.digest"
    if _is_current(target, stamp, digest):
        return target
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        built = Path(scratch) / name
        make(built)
        os.replace(built, target)
    stamp.write_text(digest + "\n")
    return target


def build_init(out_dir: Path | None = None) -> Path:
    """Compile init into ``out_dir/init`` (default: the digest-keyed cache dir)."""
    def compile_init(built: Path) -> None:
        require_gcc_m32()
        sources = [str(path) for path in init_sources() if path.suffix == ".c"]
        result = subprocess.run(["gcc", *CFLAGS, "-o", str(built), *sources, "-lgcc"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RigError("compiling the guest init failed:\n" + (result.stderr or result.stdout),
                           hint="fix the C sources in rig/guest/init/ (gcc's messages above)")

    return _cached_build(out_dir, "init", compile_init)


def build_initrd(out_dir: Path | None = None) -> Path:
    """Pack init and the device nodes into ``out_dir/initrd.ext2``."""
    def pack_image(built: Path) -> None:
        init = build_init(out_dir)  # None resolves to the same digest-keyed dir
        scratch = built.parent
        genext2fs = require("genext2fs")
        root = scratch / "root"
        root.mkdir()
        (root / "init").write_bytes(init.read_bytes())
        (root / "init").chmod(0o755)
        table = scratch / "devices.txt"
        table.write_text(DEVICE_TABLE)
        result = subprocess.run(
            [genext2fs, "-U", "-f", "-b", str(IMAGE_BLOCKS), "-N", str(IMAGE_INODES),
             "-d", str(root), "-D", str(table), str(built)],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise RigError("genext2fs failed to build the initrd:\n" + (result.stderr or result.stdout),
                           hint="check that genext2fs works (apt-get install genext2fs)")

    return _cached_build(out_dir, "initrd.ext2", pack_image)
