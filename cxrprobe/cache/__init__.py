"""cache subpackage: row stores, the image cache, image sources and embedding stores.

``open_embeddings`` is the entry point downstream studies use (``docs/embeddings.md``);
:mod:`cxrprobe.cache.source` gives the rows of images that extraction and fine-tuning read.
"""

from cxrprobe.cache.embeddings import Embeddings, create_embeddings, open_embeddings

__all__ = ["Embeddings", "create_embeddings", "open_embeddings"]
