"""The default source path (download + verify against a published sha256 list), served over loopback.

kernel.org cannot be reached from here, so a local HTTP server on 127.0.0.1 plays its part with a
small real tarball and a real sha256 listing; the code under test is the rig's own download path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rig.errors import RigError
from rig.kernel import source as kernel_source

MAKEFILE = "VERSION = 2\nPATCHLEVEL = 4\nSUBLEVEL = 20\nEXTRAVERSION =\n"


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRAPSPLICE_CACHE", str(cache))  # never touch the user's remembered source
    return cache


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A directory served on 127.0.0.1 holding linux-2.4.20.tar.bz2 and sha256sums.asc."""
    root = tmp_path / "www"
    tree = tmp_path / "linux-2.4.20"
    root.mkdir()
    tree.mkdir()
    (tree / "Makefile").write_text(MAKEFILE)
    archive = root / "linux-2.4.20.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(tree, arcname="linux-2.4.20")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (root / "sha256sums.asc").write_text(f"{'0' * 64}  linux-2.4.19.tar.bz2\n{digest}  linux-2.4.20.tar.bz2\n")
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def _manifest(base: str) -> kernel_source.Manifest:
    return dataclasses.replace(kernel_source.Manifest.load(), url=f"{base}/linux-2.4.20.tar.bz2",
                               checksums_url=f"{base}/sha256sums.asc")


def test_download_is_verified_and_remembered(served: tuple[str, Path], private_cache: Path) -> None:
    base, root = served
    archive = kernel_source.download_official(_manifest(base))
    assert archive.verified and archive.origin == "kernel.org"
    assert archive.sha256 == hashlib.sha256((root / "linux-2.4.20.tar.bz2").read_bytes()).hexdigest()
    assert archive.path.read_bytes() == (root / "linux-2.4.20.tar.bz2").read_bytes()
    assert kernel_source.remembered() == archive  # later runs (and CI) reuse it without the network


def test_a_tampered_download_is_refused_and_not_kept(served: tuple[str, Path], private_cache: Path) -> None:
    base, root = served
    (root / "linux-2.4.20.tar.bz2").write_bytes(b"not the release")
    with pytest.raises(RigError, match="kernel.org publishes"):
        kernel_source.download_official(_manifest(base))
    assert kernel_source.remembered() is None
    assert not (private_cache / "sources" / "linux-2.4.20.tar.bz2").exists()


def test_offline_says_how_to_give_a_local_source(private_cache: Path) -> None:
    unreachable = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(RigError) as error:
        kernel_source.download_official(_manifest(unreachable))
    assert "--source" in (error.value.hint or "")


def test_local_tree_is_imported_as_unverified(tmp_path: Path, private_cache: Path) -> None:
    tree = tmp_path / "src" / "linux-2.4.20"
    tree.mkdir(parents=True)
    (tree / "Makefile").write_text(MAKEFILE)
    archive = kernel_source.resolve(tree)
    assert not archive.verified and archive.origin == "local"
    with tarfile.open(archive.path) as tar:
        assert "linux-2.4.20/Makefile" in tar.getnames()
    assert kernel_source.resolve(allow_download=False) == archive
