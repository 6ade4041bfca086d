"""cache subpackage: row stores, the image cache and embedding stores.

``open_embeddings`` is the entry point downstream studies use (``docs/embeddings.md``).
"""

from cxrprobe.cache.embeddings import Embeddings, create_embeddings, open_embeddings

__all__ = ["Embeddings", "create_embeddings", "open_embeddings"]
