"""Multimodal RAG over image collections: index what the experts see, search it by words or by image.

::

    vision-router index photos/ --db ~/photo-index          # OCR text, caption, objects, embeddings
    vision-router search "receipt from the cafe" --db ~/photo-index
    vision-router search --image query.jpg --db ~/photo-index -k 3 --json
    vision-router ask new.jpg -q "have I seen this product before?" --rag ~/photo-index

Each image becomes one point (its id derived from the image_id, sha256 of the bytes) holding:

- payload: the image's paths, OCR text, caption, objects, styles, which experts ran and their errors;
- ``text`` vector: a text embedding of that stored text (Ollama ``/api/embed`` by default, e.g.
  ``nomic-embed-text``; or a local sentence-transformers model with ``st:all-MiniLM-L6-v2``);
- ``image`` vector: a CLIP image embedding, when an expert named ``clip`` is installed and exposes
  ``embed_image(image)`` / ``embed_texts(texts)`` (normalised vectors).

Storage is Qdrant through ``qdrant-client``: ``--db DIR`` is its embedded local mode (no server),
``--db http://host:6333`` the same collection on a Qdrant server or cluster when a collection outgrows
one machine (``QDRANT_API_KEY`` for its key). Local mode searches by brute force: fine for tens of
thousands of images, beyond that use a server.

Search fuses ranked lists with reciprocal rank fusion: the query text against the stored text, CLIP
text-to-image and image-to-image when CLIP vectors exist, and for an image query without CLIP, the
query image's own expert text against the stored text. Each hit says which lists found it and which
query words its stored text contains.

Indexing is incremental: a file whose size and modification time are unchanged is not even read;
a file whose bytes are already indexed (a copy, a move) only gets its path recorded; files that
disappeared from the indexed folders are dropped from the index.

The package: :mod:`.store` (the Qdrant collection and the stored document), :mod:`.embed` (text and
CLIP embeddings), :mod:`.index` (building the index), :mod:`.retrieve` (search and ``ask --rag``; not
named ``search`` so that the module never shadows the :func:`search` function exported here).
"""

from router.apps.rag.embed import (
    DEFAULT_EMBED_MODEL,
    ImageEmbedder,
    OllamaEmbedder,
    SentenceTransformerEmbedder,
    TextEmbedder,
    default_embed_model,
    make_embedder,
)
from router.apps.rag.index import INDEX_EXPERTS, Indexer, IndexReport, index_embedder, index_images, usable_experts
from router.apps.rag.retrieve import RRF_K, Hit, fuse, retrieve_context, search
from router.apps.rag.store import (
    COLLECTION,
    ImageIndex,
    ImageIndexError,
    default_db,
    document,
    document_text,
    point_id,
)

__all__ = [
    "COLLECTION",
    "DEFAULT_EMBED_MODEL",
    "INDEX_EXPERTS",
    "RRF_K",
    "Hit",
    "ImageEmbedder",
    "ImageIndex",
    "ImageIndexError",
    "IndexReport",
    "Indexer",
    "OllamaEmbedder",
    "SentenceTransformerEmbedder",
    "TextEmbedder",
    "default_db",
    "default_embed_model",
    "document",
    "document_text",
    "fuse",
    "index_embedder",
    "index_images",
    "make_embedder",
    "point_id",
    "retrieve_context",
    "search",
    "usable_experts",
]
