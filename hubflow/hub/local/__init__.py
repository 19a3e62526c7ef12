"""The local backend: a content-addressed store in a folder (see ``docs/store.md``).

``store``: :class:`LocalHub`, the Hub protocol over the folder; ``layout``: where every
file lives under the root; ``files``: hashing, copies and fsync.
"""

from hubflow.hub.local.files import commit_id_of, sha256_file
from hubflow.hub.local.layout import StoreLayout
from hubflow.hub.local.store import LocalHub

__all__ = ["LocalHub", "StoreLayout", "commit_id_of", "sha256_file"]
