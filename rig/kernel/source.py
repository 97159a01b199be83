"""Find, fetch, verify and import the Linux 2.4.20 source.

Order of preference:
1. an explicit ``--source PATH`` (or ``$TRAPSPLICE_KERNEL_SOURCE``): a local tarball
   (.tar, .tar.bz2, .tar.gz, .tar.xz) or an unpacked tree, imported into the cache and
   recorded as *unverified*;
2. a source imported earlier (the cache remembers it, so CI's fresh clone reuses it);
3. the official release downloaded from kernel.org and checked against kernel.org's
   published sha256 list.

Whatever is used must say it is 2.4.20 in its top-level Makefile.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from rig import paths
from rig.errors import RigError

SOURCE_ENV = "TRAPSPLICE_KERNEL_SOURCE"
_DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Manifest:
    name: str
    archive: str
    url: str
    checksums_url: str
    top_dir: str
    expected: dict[str, str]
    fig4_objects: list[str]

    @classmethod
    def load(cls, path: Path | None = None) -> "Manifest":
        path = path or paths.kernel_dir() / "manifest.toml"
        data = tomllib.loads(path.read_text())
        src = data["source"]
        return cls(name=src["name"], archive=src["archive"], url=src["url"],
                   checksums_url=src["checksums_url"], top_dir=src["top_dir"],
                   expected=dict(data["expected"]), fig4_objects=list(data["objects"]["fig4"]))

    @property
    def version(self) -> str:
        e = self.expected
        return f"{e['VERSION']}.{e['PATCHLEVEL']}.{e['SUBLEVEL']}{e['EXTRAVERSION']}"


@dataclass(frozen=True)
class SourceArchive:
    """An imported source tarball in the cache and where it came from."""

    path: Path
    sha256: str
    verified: bool
    origin: str  # "kernel.org" or "local"

    def describe(self) -> str:
        trust = "verified against kernel.org's sha256 list" if self.verified else "UNVERIFIED local source"
        return f"{self.path.name} sha256:{self.sha256[:16]}… ({trust})"


def _sources_dir() -> Path:
    return paths.cache_dir("sources")


def _record_path() -> Path:
    return _sources_dir() / "current.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _makefile_version(makefile_text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL", "EXTRAVERSION"):
        match = re.search(rf"^{key}[ \t]*=[ \t]*(.*)$", makefile_text, re.MULTILINE)
        found[key] = match.group(1).strip() if match else "?"
    return found


def _check_version(found: dict[str, str], manifest: Manifest, where: str) -> None:
    if found != manifest.expected:
        shown = "{VERSION}.{PATCHLEVEL}.{SUBLEVEL}{EXTRAVERSION}".format(**found)
        raise RigError(f"{where} is Linux {shown}, not {manifest.version}",
                       hint=f"give the pristine {manifest.archive} (or its unpacked tree) with --source")


def _tar_makefile(archive: Path, top_dir: str) -> str:
    try:
        with tarfile.open(archive) as tar:
            member = tar.extractfile(f"{top_dir}/Makefile")
            if member is None:
                raise KeyError(top_dir)
            return member.read().decode("latin-1")
    except (KeyError, tarfile.TarError) as exc:
        raise RigError(f"{archive} is not a {top_dir} source tarball ({exc})",
                       hint=f"the archive must contain {top_dir}/Makefile at its top") from exc


def import_local(given: Path, manifest: Manifest) -> SourceArchive:
    """Copy a local tarball or tree into the cache and remember it as the current source."""
    given = given.expanduser().resolve()
    if not given.exists():
        raise RigError(f"kernel source {given} does not exist",
                       hint=f"pass a {manifest.archive} tarball or an unpacked {manifest.top_dir} tree")
    if given.is_dir():
        makefile = given / "Makefile"
        if not makefile.exists():
            raise RigError(f"{given} has no top-level Makefile", hint="point --source at the tree's top directory")
        _check_version(_makefile_version(makefile.read_text(errors="replace")), manifest, str(given))
        staged = _sources_dir() / f"{manifest.top_dir}.local.tar"
        tmp = staged.with_suffix(".tmp")
        # Normalise a tree into a tarball with the expected top directory.
        subprocess.run(["tar", "-C", str(given.parent), "-cf", str(tmp),
                        f"--transform=s,^{re.escape(given.name)},{manifest.top_dir},", given.name],
                       check=True)
        tmp.replace(staged)
    else:
        _check_version(_makefile_version(_tar_makefile(given, manifest.top_dir)), manifest, str(given))
        suffix = "".join(given.suffixes[-2:]) if given.name.endswith((".tar.bz2", ".tar.gz", ".tar.xz")) else given.suffix
        staged = _sources_dir() / f"{manifest.top_dir}.local{suffix}"
        if staged != given:
            tmp = staged.with_name(staged.name + ".tmp")
            shutil.copyfile(given, tmp)
            tmp.replace(staged)
    archive = SourceArchive(path=staged, sha256=file_sha256(staged), verified=False, origin="local")
    _remember(archive)
    return archive


def _remember(archive: SourceArchive) -> None:
    record = {"path": archive.path.name, "sha256": archive.sha256, "verified": archive.verified,
              "origin": archive.origin, "imported_at": datetime.now(timezone.utc).isoformat()}
    _record_path().write_text(json.dumps(record, indent=2))


def remembered() -> SourceArchive | None:
    """The source imported earlier, if its file is still in the cache and intact."""
    record_path = _record_path()
    if not record_path.exists():
        return None
    record = json.loads(record_path.read_text())
    path = _sources_dir() / record["path"]
    if not path.exists():
        return None
    return SourceArchive(path=path, sha256=record["sha256"], verified=record["verified"], origin=record["origin"])


def _published_sha256(manifest: Manifest) -> str:
    with urllib.request.urlopen(manifest.checksums_url, timeout=_DOWNLOAD_TIMEOUT_S) as reply:
        listing = reply.read().decode("utf-8", errors="replace")
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == manifest.archive:
            return parts[0].lower()
    raise RigError(f"kernel.org's checksum list has no entry for {manifest.archive}",
                   hint="give a local source with --source PATH")


def download_official(manifest: Manifest) -> SourceArchive:
    """Fetch the release from kernel.org and verify it against the published sha256 list."""
    try:
        expected = _published_sha256(manifest)
        target = _sources_dir() / manifest.archive
        with tempfile.NamedTemporaryFile(dir=_sources_dir(), delete=False) as tmp:
            with urllib.request.urlopen(manifest.url, timeout=_DOWNLOAD_TIMEOUT_S) as reply:
                shutil.copyfileobj(reply, tmp)
        got = file_sha256(Path(tmp.name))
        if got != expected:
            os.unlink(tmp.name)
            raise RigError(f"downloaded {manifest.archive} has sha256 {got}, kernel.org publishes {expected}",
                           hint="retry the download; if it persists, give a local source with --source")
        Path(tmp.name).replace(target)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise RigError(f"cannot download {manifest.url} ({exc})",
                       hint=f"offline? give a local copy: invoke kernel --source /path/to/{manifest.archive} "
                            f"(a tarball or unpacked tree), or set ${SOURCE_ENV}") from exc
    archive = SourceArchive(path=target, sha256=expected, verified=True, origin="kernel.org")
    _remember(archive)
    return archive


def resolve(explicit: Path | None = None, allow_download: bool = True) -> SourceArchive:
    """The source to build from, importing or downloading it if needed."""
    manifest = Manifest.load()
    chosen = explicit or (Path(os.environ[SOURCE_ENV]) if os.environ.get(SOURCE_ENV) else None)
    if chosen is not None:
        current = remembered()
        # Re-importing the very same tarball is pointless work; a tree is always re-tarred.
        if current and chosen.is_file() and current.sha256 == file_sha256(chosen):
            return current
        return import_local(chosen, manifest)
    current = remembered()
    if current is not None:
        return current
    if not allow_download:
        raise RigError(f"no {manifest.name} source is known to the rig",
                       hint=f"run: invoke kernel --source /path/to/{manifest.archive}")
    return download_official(manifest)
