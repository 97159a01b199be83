"""Build Linux 2.4.20 (bzImage, vmlinux with symbols, System.map) out of the repository.

A build lives in ``<cache>/kernels/<key>/`` where the key hashes everything that
changes its output: the source tarball, the patch series, the config, the
toolchain description and the host compiler/assembler versions.  A build is
done in ``<key>.partial`` and renamed into place only when it succeeded, so the
cache never holds a half-built kernel; a failed build leaves only its log.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rig import paths, tools
from rig.errors import RigError
from rig.kernel import source as kernel_source

STEPS = ("extract", "patch", "configure", "dep", "compile", "collect")
_JOBS = 2
_ERROR_LINE = re.compile(r"(: error: |: Error: |undefined reference to|\*\*\* )")


@dataclass(frozen=True)
class Toolchain:
    """The make variables that let today's gcc build 2.4.20 (kernels/linux-2.4.20/toolchain.toml)."""

    variables: dict[str, str]
    reasons: dict[str, str]
    text: str

    @classmethod
    def load(cls, path: Path | None = None) -> "Toolchain":
        path = path or paths.kernel_dir() / "toolchain.toml"
        text = path.read_text()
        data = tomllib.loads(text)
        make = data["make"]
        variables = {"ARCH": make["arch"], "CC": make["cc"], "AS": make["as"], "LD": make["ld"]}
        variables.update({k: str(v) for k, v in make.get("extra", {}).items()})
        return cls(variables=variables, reasons=dict(data.get("why", {})), text=text)

    def make_args(self) -> list[str]:
        return [f"{name}={value}" for name, value in self.variables.items()]

    @property
    def cc(self) -> str:
        return self.variables["CC"]


def patch_series() -> list[Path]:
    series = paths.patches_dir() / "series"
    if not series.exists():
        return []
    names = [line.strip() for line in series.read_text().splitlines()]
    return [paths.patches_dir() / name for name in names if name and not name.startswith("#")]


def host_toolchain_versions() -> dict[str, str]:
    versions = {"gcc": tools.gcc_version()}
    ld = subprocess.run(["ld", "--version"], capture_output=True, text=True)
    versions["ld"] = ld.stdout.splitlines()[0].strip() if ld.returncode == 0 else "unknown"
    return versions


@dataclass(frozen=True)
class KernelBuild:
    """A finished build in the cache."""

    root: Path

    @property
    def key(self) -> str:
        return self.root.name

    @property
    def build_id(self) -> str:
        return self.key[:12]

    @property
    def tree(self) -> Path:
        return self.root / "tree"

    @property
    def bzimage(self) -> Path:
        return self.tree / "arch/i386/boot/bzImage"

    @property
    def vmlinux(self) -> Path:
        return self.tree / "vmlinux"

    @property
    def system_map(self) -> Path:
        return self.tree / "System.map"

    @property
    def log(self) -> Path:
        return self.root / "build.log"

    def object(self, relative: str) -> Path:
        return self.tree / relative

    @property
    def info(self) -> dict:
        return json.loads((self.root / "build.json").read_text())


@dataclass
class BuildInputs:
    archive: kernel_source.SourceArchive
    manifest: kernel_source.Manifest
    toolchain: Toolchain
    patches: list[Path]
    config: Path
    host: dict[str, str] = field(default_factory=host_toolchain_versions)

    def key(self) -> str:
        digest = hashlib.sha256()
        digest.update(self.archive.sha256.encode())
        for patch in self.patches:
            digest.update(patch.name.encode() + b"\0" + patch.read_bytes())
        digest.update(self.config.read_bytes())
        digest.update(self.toolchain.text.encode())
        digest.update(json.dumps(self.host, sort_keys=True).encode())
        return digest.hexdigest()[:32]


def _kernels_dir() -> Path:
    return paths.cache_dir("kernels")


def gather_inputs(source: Path | None = None, allow_download: bool = True) -> BuildInputs:
    tools.require_gcc_m32()
    for tool in ("make", "patch", "tar"):
        tools.require(tool)
    archive = kernel_source.resolve(source, allow_download=allow_download)
    return BuildInputs(archive=archive, manifest=kernel_source.Manifest.load(), toolchain=Toolchain.load(),
                       patches=patch_series(), config=paths.kernel_dir() / "config")


def cached(inputs: BuildInputs) -> KernelBuild | None:
    root = _kernels_dir() / inputs.key()
    return KernelBuild(root) if (root / "build.json").exists() else None


Progress = Callable[[str, str], None]
"""progress(step, detail): step is one of STEPS; detail is a short line (e.g. the file being compiled)."""


def _quiet(step: str, detail: str) -> None:
    del step, detail


class _Runner:
    """Runs build commands in the tree, appending everything to one log."""

    def __init__(self, tree: Path, log: Path, progress: Progress) -> None:
        self.tree = tree
        self.log = log
        self.progress = progress

    def run(self, step: str, argv: list[str], stdin: str | None = None) -> None:
        self.progress(step, shlex.join(argv[:3]))
        with self.log.open("a") as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            proc = subprocess.Popen(argv, cwd=self.tree, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    text=True, errors="replace")
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if step == "compile" and line.startswith("gcc") and " -c " in line:
                    self.progress(step, _compiled_file(line))
            code = proc.wait()
        if code != 0:
            raise BuildFailed(step, self.log)


def _compiled_file(line: str) -> str:
    sources = [word for word in line.split() if word.endswith((".c", ".S"))]
    return sources[-1] if sources else line[:60]


class BuildFailed(RigError):
    def __init__(self, step: str, log: Path) -> None:
        errors = first_errors(log)
        shown = "\n".join(f"    {line}" for line in errors) or "    (no compiler error lines found)"
        super().__init__(f"kernel build failed in step '{step}'; first errors:\n{shown}",
                         hint=f"full log: {log}")
        self.step = step
        self.log = log


def first_errors(log: Path, limit: int = 10) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if _ERROR_LINE.search(line)][:limit]


def _failure_log_dir() -> Path:
    return paths.cache_dir("kernels", "failed-logs")


@contextmanager
def _building(key: str) -> Iterator[None]:
    """Held while one process builds ``key``: another (a second terminal, a sweep's Dask workers
    on one machine) waits for it and then finds the build in the cache instead of colliding in
    the same ``.partial`` directory. The kernel drops the lock if its holder dies."""
    with open(_kernels_dir() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(inputs: BuildInputs, progress: Progress = _quiet, jobs: int = _JOBS) -> KernelBuild:
    """Build the kernel described by ``inputs`` (or return the cached build)."""
    done = cached(inputs)
    if done is not None:
        return done
    with _building(inputs.key()):
        return cached(inputs) or _build_locked(inputs, progress, jobs)


def _build_locked(inputs: BuildInputs, progress: Progress, jobs: int) -> KernelBuild:
    key = inputs.key()
    final = _kernels_dir() / key
    partial = _kernels_dir() / f"{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = partial / "build.log"
    started = time.monotonic()
    try:
        tree = _unpack(inputs, partial, log, progress)
        runner = _Runner(tree, log, progress)
        for patch in inputs.patches:
            runner.run("patch", ["patch", "-p1", "--forward", "--batch", "-i", str(patch)])
        shutil.copyfile(inputs.config, tree / ".config")
        make = ["make", *inputs.toolchain.make_args()]
        runner.run("configure", [*make, "oldconfig"], stdin="\n" * 2000)
        runner.run("dep", [*make, "dep"])
        runner.run("compile", ["make", f"-j{jobs}", *inputs.toolchain.make_args(), "bzImage"])
        progress("collect", "vmlinux, System.map, objects")
        _check_outputs(tree, inputs.manifest)
    except BuildFailed as failure:
        kept = _failure_log_dir() / f"{key}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.log"
        shutil.copyfile(log, kept)
        shutil.rmtree(partial, ignore_errors=True)
        raise BuildFailed(failure.step, kept) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    info = {
        "key": key,
        "build_id": key[:12],
        "source": {"file": inputs.archive.path.name, "sha256": inputs.archive.sha256,
                   "verified": inputs.archive.verified, "origin": inputs.archive.origin},
        "patches": [p.name for p in inputs.patches],
        "cc": inputs.toolchain.cc,
        "host": inputs.host,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": datetime.now(timezone.utc).isoformat(),
        "vmlinux_sha256": kernel_source.file_sha256(tree / "vmlinux"),
    }
    (partial / "build.json").write_text(json.dumps(info, indent=2))
    partial.rename(final)
    return KernelBuild(final)


def _unpack(inputs: BuildInputs, into: Path, log: Path, progress: Progress) -> Path:
    progress("extract", inputs.archive.path.name)
    with log.open("a") as handle:
        handle.write(f"source: {inputs.archive.describe()}\n")
    subprocess.run(["tar", "-C", str(into), "-xf", str(inputs.archive.path)], check=True)
    top = into / inputs.manifest.top_dir
    if not top.is_dir():
        raise RigError(f"{inputs.archive.path} did not unpack into {inputs.manifest.top_dir}/")
    return top.rename(into / "tree")


def _check_outputs(tree: Path, manifest: kernel_source.Manifest) -> None:
    wanted = ["arch/i386/boot/bzImage", "vmlinux", "System.map", *manifest.fig4_objects]
    missing = [name for name in wanted if not (tree / name).exists()]
    if missing:
        raise RigError(f"kernel build finished but these outputs are missing: {', '.join(missing)}",
                       hint="check the config (kernels/linux-2.4.20/config) builds them in")


def ensure_kernel(source: Path | None = None, progress: Progress = _quiet,
                  allow_download: bool = True) -> KernelBuild:
    """The current kernel build, building it first if the cache has none for these inputs."""
    return build(gather_inputs(source, allow_download=allow_download), progress=progress)
