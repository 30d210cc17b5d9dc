"""Content-addressed cache of exported and compiled artifacts.

A key is the SHA-256 of everything that determines an artifact: the model's content key,
the input signature, the canonical backend spec and the versions of the runtimes involved.
Each key is a folder; an artifact is written to a temporary name and renamed, so an
interrupted run never leaves a half-written file behind that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

CACHE_FORMAT = 2  # bump when what is cached (or read back beside it) changes


def default_cache_dir() -> Path:
    base = os.environ.get("BACKENDIFF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "backendiff"
    )
    return Path(base)


def content_key(*parts) -> str:
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class Cache:
    """``root`` None means caching is off: every folder handed out is a fresh temp dir."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def folder(self, kind: str, key: str) -> Path:
        if self.root is None:
            if self._tmp is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="backendiff-")
            base = Path(self._tmp.name)
        else:
            base = self.root
        path = base / kind / key[:2] / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prepare(self) -> None:
        """Make the temp folder of a disabled cache now (before forking workers, which do not
        clean up after themselves)."""
        if self.root is None and self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="backendiff-")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def write_atomic(path: Path, writer) -> Path:
    """Call ``writer(tmp_path)`` then rename to ``path``."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")  # suffix kept: some writers check it
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
