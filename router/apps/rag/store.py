"""The image index's storage: a Qdrant collection (embedded on a folder, or a server by URL) and the
document stored for each image."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from experts.errors import VisionRouterError
from experts.install import install_hint
from experts.schema import ImageAnalysis

COLLECTION = "vision_router_images"


class ImageIndexError(VisionRouterError):
    """The index could not be opened, read or written."""


def default_db() -> str:
    """``$VISION_ROUTER_INDEX``, else ``~/.local/share/vision-router/index``."""
    env = os.environ.get("VISION_ROUTER_INDEX")
    if env:
        return env
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "vision-router" / "index")


# --- the stored document ------------------------------------------------------------------------
def document(analysis: ImageAnalysis) -> dict[str, Any]:
    """What is stored for one image, from its merged expert results."""
    ocr_text = analysis.full_text or " ".join(t.text for t in analysis.text)
    return {
        "ocr_text": ocr_text.strip(),
        "caption": analysis.caption or "",
        "objects": list(analysis.objects),
        "styles": [s.name for s in analysis.styles[:5]],
        "errors": dict(analysis.errors),
        "width": analysis.width,
        "height": analysis.height,
    }


def document_text(doc: dict[str, Any]) -> str:
    """The text that is embedded: the words an image can be found by."""
    parts = []
    if doc.get("ocr_text"):
        parts.append(f"text: {doc['ocr_text']}")
    if doc.get("caption"):
        parts.append(f"caption: {doc['caption']}")
    # " / " between items keeps every word a word for any tokenizer (no "cat," tokens).
    if doc.get("objects"):
        parts.append("objects: " + " / ".join(doc["objects"]))
    if doc.get("styles"):
        parts.append("style: " + " / ".join(doc["styles"]))
    return "\n".join(parts) or "(nothing recognised)"


def point_id(image_id: str) -> str:
    """Qdrant wants a UUID or an integer: the first 128 bits of the sha256."""
    return str(uuid.UUID(hex=image_id[:32]))


class ImageIndex:
    """A Qdrant collection of images: embedded local mode on a folder, or a server by URL."""

    def __init__(self, db: str | Path) -> None:
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise ImageIndexError(f"the image index needs qdrant-client: {install_hint('rag')}") from None
        self.db = str(db)
        try:
            if re.match(r"https?://", self.db):
                self.client = QdrantClient(url=self.db, api_key=os.environ.get("QDRANT_API_KEY"))
            else:
                Path(self.db).expanduser().mkdir(parents=True, exist_ok=True)
                self.client = QdrantClient(path=str(Path(self.db).expanduser()))
        except RuntimeError as exc:
            if "already accessed" in str(exc):
                raise ImageIndexError(
                    f"index {self.db} is open in another process; wait for it, or use a Qdrant server"
                ) from None
            raise ImageIndexError(f"index {self.db}: {exc}") from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing twice or a gone server: nothing to keep
            pass

    def __enter__(self) -> ImageIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- collection -----------------------------------------------------------------------------
    def exists(self) -> bool:
        return self.client.collection_exists(COLLECTION)

    def vector_sizes(self) -> dict[str, int]:
        if not self.exists():
            return {}
        vectors = self.client.get_collection(COLLECTION).config.params.vectors
        return {name: p.size for name, p in (vectors or {}).items()}

    def ensure(self, text_dim: int, image_dim: int | None) -> dict[str, int]:
        from qdrant_client import models

        sizes = self.vector_sizes()
        if not sizes:
            cfg = {"text": models.VectorParams(size=text_dim, distance=models.Distance.COSINE)}
            if image_dim:
                cfg["image"] = models.VectorParams(size=image_dim, distance=models.Distance.COSINE)
            self.client.create_collection(COLLECTION, vectors_config=cfg)
            return {"text": text_dim, **({"image": image_dim} if image_dim else {})}
        if sizes.get("text") != text_dim:
            raise ImageIndexError(
                f"index {self.db} holds {sizes.get('text')}-dimensional text vectors, this embedding model "
                f"gives {text_dim}: use the model it was built with (see `search --json`), or another --db"
            )
        return sizes

    def meta(self) -> dict[str, Any]:
        """The embedding models the index was built with (from any one point)."""
        if not self.exists():
            return {}
        points, _ = self.client.scroll(COLLECTION, limit=1, with_payload=["text_model", "image_model"])
        return dict(points[0].payload or {}) if points else {}

    def count(self) -> int:
        return self.client.count(COLLECTION).count if self.exists() else 0

    def files(self) -> dict[str, tuple[str, int, int]]:
        """path -> (image_id, size, mtime_ns) of every indexed file."""
        out: dict[str, tuple[str, int, int]] = {}
        if not self.exists():
            return out
        offset = None
        while True:
            points, offset = self.client.scroll(
                COLLECTION, limit=256, offset=offset, with_payload=["image_id", "files"]
            )
            for p in points:
                pl = p.payload or {}
                for f in pl.get("files", []):
                    out[f["path"]] = (pl["image_id"], int(f.get("size", -1)), int(f.get("mtime_ns", -1)))
            if offset is None:
                return out

    def get(self, image_id: str) -> dict[str, Any] | None:
        if not self.exists():
            return None
        pts = self.client.retrieve(COLLECTION, ids=[point_id(image_id)], with_payload=True)
        return dict(pts[0].payload or {}) if pts else None

    def set_files(self, image_id: str, files: list[dict[str, Any]]) -> None:
        from qdrant_client import models

        if files:
            self.client.set_payload(
                COLLECTION, payload={"files": files, "paths": [f["path"] for f in files]}, points=[point_id(image_id)]
            )
        else:
            self.client.delete(COLLECTION, points_selector=models.PointIdsList(points=[point_id(image_id)]))

    def upsert(self, items: list[tuple[dict[str, Any], dict[str, list[float]]]]) -> None:
        from qdrant_client import models

        if items:
            self.client.upsert(
                COLLECTION,
                points=[models.PointStruct(id=point_id(pl["image_id"]), vector=vec, payload=pl) for pl, vec in items],
            )

    def query(self, vector: np.ndarray, using: str, limit: int) -> list[tuple[str, float, dict[str, Any]]]:
        res = self.client.query_points(COLLECTION, query=vector.tolist(), using=using, limit=limit, with_payload=True)
        return [(str((p.payload or {}).get("image_id")), float(p.score), dict(p.payload or {})) for p in res.points]
