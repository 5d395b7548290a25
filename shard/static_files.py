"""The shard's static files: the demo page at ``/`` and the JS client at ``/client/<name>.js``.

Everything served is read once at start-up into a fixed table, so a request
can only ever get bytes chosen then: the request path is never joined to a
file-system path. The client folder contributes only regular ``.js`` files
directly inside it (no sub-folders, no symbolic links, no dot-files), which
is what the browser needs to import ``/client/index.js`` and its relative
imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CLIENT_PREFIX = "/client/"
DEMO_PAGE = Path(__file__).with_name("static") / "demo.html"
CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js" / "src"
JS_TYPE = "text/javascript; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
# A plain file name: no separators, no leading dot, nothing a URL or a shell would reinterpret.
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.js")


@dataclass(frozen=True)
class Asset:
    """One servable file: its content type and bytes, fixed at start-up."""

    content_type: str
    body: bytes


def client_file_name(path: str) -> str | None:
    """The file name a ``/client/<name>.js`` request path asks for, or None if it is not one.

    Pure, so the path rules are tested without files: exactly one plain
    segment after the prefix, ending in ``.js``; anything with a slash,
    backslash, ``..``, percent-escape or NUL is not a client file.
    """
    if not path.startswith(CLIENT_PREFIX):
        return None
    name = path[len(CLIENT_PREFIX):]
    if ".." in name or _CLIENT_NAME.fullmatch(name) is None:
        return None
    return name


def load_client_files(folder: Path) -> dict[str, bytes]:
    """Name → bytes of the regular ``.js`` files directly in `folder` (none if it is missing).

    Symbolic links are skipped whatever they point at, so nothing outside
    the folder can be reached through one; so are names `client_file_name`
    would refuse, which keeps the table and the request rule in agreement.
    """
    out: dict[str, bytes] = {}
    if not folder.is_dir() or folder.is_symlink():
        return out
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        if client_file_name(CLIENT_PREFIX + entry.name) != entry.name:
            continue
        out[entry.name] = entry.read_bytes()
    return out


class StaticFiles:
    """The fixed table of static assets one shard serves, by request path."""

    def __init__(self, demo_page: Path = DEMO_PAGE, client_dir: Path = CLIENT_DIR) -> None:
        self.assets: dict[str, Asset] = {"/": Asset(HTML_TYPE, demo_page.read_bytes())}
        for name, body in load_client_files(client_dir).items():
            self.assets[CLIENT_PREFIX + name] = Asset(JS_TYPE, body)

    def get(self, path: str | None) -> Asset | None:
        """The asset served at `path`, or None (the caller answers 404)."""
        if path is None:
            return None
        if path != "/" and client_file_name(path) is None:
            return None
        return self.assets.get(path)


def headers(asset: Asset) -> list[tuple[str, str]]:
    """Response headers of an asset: no type sniffing, revalidate on every load."""
    return [("Content-Type", asset.content_type), ("Content-Length", str(len(asset.body))),
            ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-cache")]
