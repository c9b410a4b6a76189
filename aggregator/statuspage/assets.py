"""The page's files shipped in the package (templates/, static/), read once at start.

`Assets.load()` reads every file under static/ and templates/ through importlib.resources
(so an installed wheel serves what the source tree does). A static file's `version` is the
start of its sha256: pages link `/static/app.js?v=<version>`, which may then be cached for a
year; its `etag` answers `If-None-Match`. Nothing is fetched at run time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from string import Template

__all__ = ["CONTENT_TYPES", "Asset", "Assets"]

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


@dataclass(frozen=True, slots=True)
class Asset:
    name: str
    body: bytes
    content_type: str
    version: str  # the first 12 hex digits of the body's sha256
    etag: str  # the quoted version, as the header carries it


@dataclass(frozen=True, slots=True)
class Assets:
    static: dict[str, Asset]
    templates: dict[str, Template]

    @classmethod
    def load(cls, package: str = "aggregator.statuspage") -> Assets:
        root = resources.files(package)
        static: dict[str, Asset] = {}
        for item in (root / "static").iterdir():
            name = item.name
            suffix = name[name.rfind(".") :] if "." in name else ""
            if not item.is_file() or suffix not in CONTENT_TYPES:
                continue
            body = item.read_bytes()
            version = hashlib.sha256(body).hexdigest()[:12]
            static[name] = Asset(name, body, CONTENT_TYPES[suffix], version, f'"{version}"')
        templates = {
            item.name.removesuffix(".html"): Template(item.read_text(encoding="utf-8"))
            for item in (root / "templates").iterdir()
            if item.is_file() and item.name.endswith(".html")
        }
        return cls(static, templates)

    def version(self, name: str) -> str:
        asset = self.static.get(name)
        return asset.version if asset is not None else "0"

    @property
    def total_bytes(self) -> int:
        return sum(len(a.body) for a in self.static.values())
