"""The console's static files, served under a content hash so browsers keep them a year."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import Response

STATIC_ROOT = Path(__file__).parent / "static"
PREFIX = "/console/static"
IMMUTABLE = "public, max-age=31536000, immutable"
SERVED_SUFFIXES = {".js", ".css", ".svg", ".woff2"}


@dataclass(frozen=True)
class Asset:
    content: bytes
    digest: str
    media_type: str


class Assets:
    """Every servable file under static/, read once, keyed by its relative path."""

    def __init__(self, root: Path = STATIC_ROOT) -> None:
        self.files: dict[str, Asset] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.suffix not in SERVED_SUFFIXES:
                continue
            content = path.read_bytes()
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if path.suffix == ".js":
                media_type = "text/javascript"
            self.files[path.relative_to(root).as_posix()] = Asset(
                content=content,
                digest=hashlib.sha256(content).hexdigest()[:16],
                media_type=media_type,
            )

    def url(self, name: str) -> str:
        """The hashed URL of a file (KeyError for a file that is not there)."""
        return f"{PREFIX}/{self.files[name].digest}/{name}"

    def response(self, digest: str, name: str) -> Response:
        """The file, when the hash is its current one; 404 otherwise."""
        asset = self.files.get(name)
        if asset is None or asset.digest != digest:
            raise HTTPException(status_code=404, detail="Not found")
        return Response(
            asset.content,
            media_type=asset.media_type,
            headers={"Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"},
        )
