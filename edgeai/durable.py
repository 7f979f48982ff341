"""Flushing to disk for atomic saves: write a temporary, fsync it, rename it into place, fsync the directory.
A rename is atomic only for data that is already on disk."""
from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path) -> None:
    """fsync one file, or one directory where the platform can open directories (POSIX)."""
    p = Path(path)
    if p.is_dir() and not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(str(p), os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if p.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder) -> None:
    """fsync every file under `folder`, then the folder itself."""
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            fsync_path(p)
    fsync_path(folder)
