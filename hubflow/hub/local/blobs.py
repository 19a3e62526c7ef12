"""The content-addressed objects of a local store: bringing files in, handing copies out.

A blob is a file's bytes, stored once under ``objects/sha256/`` by their sha256 and read-only.
:meth:`Blobs.ingest` brings a file in (hardlinked, or copied in the kernel and checked not
to have changed); :meth:`Blobs.place` hands a verified blob out to a snapshot, as a private
copy by default so that nothing written to a snapshot can reach the store.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubflow.errors import CorruptObject, HubError
from hubflow.files import NOT_WRITABLE
from hubflow.hub.local import files
from hubflow.hub.local.layout import StoreLayout

FSCK_HINT = "run `hubflow fsck` to list every damaged object, then re-commit the affected files"


@contextmanager
def writing(root: Path) -> Iterator[None]:
    """Turn "this store cannot be written" (read-only filesystem, permissions, full disk)
    into one :class:`HubError` naming the store and the fix."""
    try:
        yield
    except OSError as err:
        if err.errno not in NOT_WRITABLE:
            raise
        where = f" ({err.filename})" if err.filename else ""
        raise HubError(
            f"cannot write the local store at {root}: {err.strerror}{where}",
            hint="make the store writable for this user (or free space on its disk), or point "
            "`hub.root` in the manifest (or HUBFLOW_HUB_ROOT) at a writable folder; "
            "`hubflow validate` and `plan` only read it",
        ) from None


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int
    stat_key: tuple[int, int, int]
    """Inode, size and mtime of the source when it was hashed: a copy checks it did not change."""


@dataclass
class Blobs:
    """The blobs of the store at ``layout``; see :class:`~hubflow.hub.local.LocalHub` for the flags."""

    layout: StoreLayout
    link_sources: bool = True
    fsync_blobs: bool = False

    def exists(self, sha256: str) -> bool:
        return self.layout.blob(sha256).exists()

    def ingest(self, source: Path) -> Blob:
        """Hash ``source`` and make sure its blob exists; write nothing if it already does."""
        key = files.stat_key(source)
        sha, size = files.hash_file(source)
        found = Blob(sha, size, key)
        blob = self.layout.blob(sha)
        if blob.exists():
            try:  # refresh the ctime so that fsck --repair sees the blob as in use
                os.utime(blob)
            except OSError:
                pass
        else:
            self.store(source, found)
        return found

    def store(self, source: Path, found: Blob) -> None:
        """Hardlink (or copy) ``source``, hashed as ``found``, into its blob path."""
        with writing(self.layout.root):
            self._write(source, found)

    def _write(self, source: Path, found: Blob) -> None:
        sha, blob = found.sha256, self.layout.blob(found.sha256)
        if not blob.parent.is_dir():
            blob.parent.mkdir(parents=True, exist_ok=True)
            if self.fsync_blobs:
                files.fsync_dir(blob.parent.parent)
        tmp = self.layout.new_tmp()
        try:
            if not (self.link_sources and _link_readonly(source, tmp)):
                copied = files.copy_file(source, tmp, fsync=self.fsync_blobs)
                if copied != found.size or files.stat_key(source) != found.stat_key:
                    raise HubError(
                        f"{source} changed while it was being committed (sha256 {sha[:12]} no longer holds)",
                        hint="do not modify files while committing them; retry the commit",
                    )
                os.chmod(tmp, 0o444)
            elif self.fsync_blobs:
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(tmp, blob)
            if self.fsync_blobs:
                files.fsync_dir(blob.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def place(self, sha256: str, size: int, target: Path, *, link: bool = False) -> None:
        """Put the blob ``sha256`` (of ``size`` bytes) at ``target`` (replacing a file there), read-only.

        Default: a private copy (reflink where the filesystem has them, else a copy made in one
        pass that hashes each chunk it writes), so the bytes checked are the bytes the reader
        gets and no write to ``target`` (root's included) can reach the blob. ``link``: a hardlink to the verified
        blob instead (same inode: a write to ``target`` would change stored content).
        Raises :class:`CorruptObject` when the blob is missing or does not match its hash, and
        IsADirectoryError when ``target`` is a folder.
        """
        blob = self.layout.blob(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".hubflow-tmp-{uuid.uuid4().hex}"
        try:
            try:
                if link:
                    self._check(blob, sha256, size, files.hash_file(blob))
                if not (link and _hardlink(blob, tmp)):
                    self._check(blob, sha256, size, files.clone_hashed(blob, tmp))
                    os.chmod(tmp, 0o444)
            except FileNotFoundError:
                if blob.exists():
                    raise
                raise CorruptObject(f"blob {blob} is missing", hint=FSCK_HINT) from None
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder", str(target))
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)  # rename() is a no-op when target is already that inode

    @staticmethod
    def _check(blob: Path, sha256: str, size: int, got: tuple[str, int]) -> None:
        if got != (sha256, size):
            raise CorruptObject(f"blob {blob} does not match its sha256", hint=FSCK_HINT)


def _link_readonly(source: Path, tmp: Path) -> bool:
    try:
        os.link(source, tmp)
        os.chmod(tmp, 0o444)
        return True
    except OSError:  # other filesystem, not our file, no hardlinks: copy instead
        tmp.unlink(missing_ok=True)
        return False


def _hardlink(blob: Path, tmp: Path) -> bool:
    try:
        os.link(blob, tmp)
        return True
    except FileNotFoundError:
        raise
    except OSError:  # another filesystem: copy instead
        return False
