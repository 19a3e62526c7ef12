"""The commit text codec shared by the `hf` backend and `hubflow serve`.

The Hub's commits carry a title and a description, not metadata: hubflow appends a fenced
JSON trailer to the description holding the exact message, the metadata and a per-attempt
nonce, and reads it back from any commit listing. Also the two ids the Hub reports for a
file: the git blob sha1 of a regular file, and the sha1 of an LFS file's pointer.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

NONCE_KEY = "_hubflow_nonce"
"""Key of the per-attempt commit nonce inside the trailer's metadata (stripped on read)."""
TRAILER_INFO = "hubflow-commit"
_TRAILER = re.compile(r"```" + TRAILER_INFO + r"\n(?P<json>.*?)\n```\s*$", re.DOTALL)


def encode_commit_text(message: str, metadata: Mapping[str, Any], nonce: str | None) -> tuple[str, str]:
    """Split ``message`` into the Hub's (summary, description) and append the metadata trailer.

    The trailer is a fenced block whose JSON holds the exact message, the metadata and
    the nonce, so :func:`decode_commit_text` gives back exactly what was committed.
    """
    first, _, rest = message.strip("\n").partition("\n")
    summary = first.strip() or "hubflow commit"
    payload: dict[str, Any] = {"message": message, "metadata": dict(metadata)}
    if nonce:
        payload["metadata"][NONCE_KEY] = nonce
    body = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    rest = rest.strip("\n")
    description = (rest + "\n\n" if rest else "") + f"```{TRAILER_INFO}\n{body}\n```"
    return summary, description


def decode_commit_text(title: str, body: str) -> tuple[str, dict[str, Any], str | None]:
    """``(message, metadata, nonce)`` from a commit's title and description.

    A commit without a trailer (made by another tool) gives its plain text and no metadata.
    """
    match = _TRAILER.search(body or "")
    if match:
        try:
            payload = json.loads(match.group("json"))
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("metadata"), dict):
            metadata = dict(payload["metadata"])
            nonce = metadata.pop(NONCE_KEY, None)
            message = payload.get("message")
            if not isinstance(message, str):
                message = title
            return message, metadata, nonce if isinstance(nonce, str) else None
    body = (body or "").strip("\n")
    return (f"{title}\n\n{body}" if body else title), {}, None


def git_blob_id(data: bytes) -> str:
    """The git blob sha1 of ``data`` (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file of an object (its git blob id is an LFS file's oid)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
