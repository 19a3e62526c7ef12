"""Small filesystem helpers shared by the runner and the hub layer."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})
"""The errnos that mean "this folder cannot be written here", whatever the call that met them."""


def rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only files and folders (input snapshots, downloads)."""

    def onerror(func: Any, p: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(p), 0o700)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o700)
        func(p)

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path, onerror=onerror)
