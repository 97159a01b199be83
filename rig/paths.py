"""Where the rig keeps things outside the repository.

Downloads, kernel builds and the running guest's state live in a per-user cache
(``$TRAPSPLICE_CACHE`` or ``$XDG_CACHE_HOME/trapsplice``), so a fresh clone on the
same machine (CI) reuses them and nothing built from kernel source lands in git.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    explicit = os.environ.get("TRAPSPLICE_CACHE")
    if explicit:
        root = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(xdg) / "trapsplice"
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_dir() -> Path:
    """The repository's kernel description (config, manifest)."""
    return REPO_ROOT / "kernels" / "linux-2.4.20"


def patches_dir() -> Path:
    return REPO_ROOT / "patches"


def reports_dir() -> Path:
    return REPO_ROOT / "reports"
