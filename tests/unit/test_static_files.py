"""The shard's static files: the /client/*.js path rule, the allow-list built from a folder, the table."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shard.static_files import (
    CLIENT_DIR,
    DEMO_PAGE,
    HTML_TYPE,
    JS_TYPE,
    StaticFiles,
    client_file_name,
    headers,
    load_client_files,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("path", "name"), [
    ("/client/index.js", "index.js"),
    ("/client/core.positions.js", "core.positions.js"),
    ("/client/ws_adapter-2.js", "ws_adapter-2.js"),
])
def test_plain_js_names_under_the_prefix_are_client_files(path, name):
    """A single plain `.js` segment after /client/ names that file."""
    assert client_file_name(path) == name


@pytest.mark.parametrize("path", [
    "/client/", "/client/index.d.ts", "/client/index.mjs", "/client/.js", "/client/.hidden.js",
    "/client/../server.py", "/client/..js", "/client/a..js", "/client/../../etc/passwd.js",
    "/client/sub/index.js", "/client//index.js", "/client/%2e%2e/x.js", "/client/a\\b.js",
    "/client/a\x00.js", "/client/index.js/", "/client/index.js?x=1", "/client/ index.js",
    "/client/index.JS", "/clientindex.js", "/CLIENT/index.js", "/x/client/index.js",
    "/client/" + "a" * 101 + ".js", "/", "", "/ws",
])
def test_anything_else_is_not_a_client_file(path):
    """Traversal, sub-folders, escapes, other extensions, hidden names and odd prefixes are refused."""
    assert client_file_name(path) is None


def test_allow_list_holds_only_regular_js_files_directly_in_the_folder(tmp_path):
    """Sub-folders, other extensions, dot-files and symlinks (in or out of the folder) are left out."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "index.js").write_bytes(b"export const a = 1;\n")
    (src / "core.js").write_bytes(b"export const b = 2;\n")
    (src / "index.d.ts").write_text("export {};\n")
    (src / ".secret.js").write_text("x")
    (src / "sub" / "deep.js").write_text("x")
    (src / "folder.js").mkdir()
    outside = tmp_path / "outside.js"
    outside.write_text("secret outside")
    os.symlink(outside, src / "out.js")
    os.symlink(src / "core.js", src / "alias.js")
    assert load_client_files(src) == {"core.js": b"export const b = 2;\n",
                                      "index.js": b"export const a = 1;\n"}


def test_missing_or_symlinked_folder_serves_nothing(tmp_path):
    """No client folder (or a symlink to one) gives an empty allow-list, not an error."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "index.js").write_text("x")
    os.symlink(real, tmp_path / "link")
    assert load_client_files(tmp_path / "missing") == {}
    assert load_client_files(tmp_path / "link") == {}


def test_table_serves_page_and_listed_files_with_bytes_fixed_at_startup(tmp_path):
    """"/" is the page, /client/x.js its cached bytes (later edits unseen), everything else None."""
    page = tmp_path / "demo.html"
    page.write_bytes(b"<!doctype html><p>demo</p>")
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.js").write_bytes(b"export {};\n")
    files = StaticFiles(page, src)
    (src / "index.js").write_bytes(b"changed")
    (src / "late.js").write_bytes(b"added after start-up")
    home, js = files.get("/"), files.get("/client/index.js")
    assert (home.content_type, home.body) == (HTML_TYPE, b"<!doctype html><p>demo</p>")
    assert (js.content_type, js.body) == (JS_TYPE, b"export {};\n")
    assert JS_TYPE == "text/javascript; charset=utf-8"
    for path in ("/client/late.js", "/client/../demo.html", "/demo.html", "/client/index.d.ts", None):
        assert files.get(path) is None
    assert headers(js) == [("Content-Type", JS_TYPE), ("Content-Length", "11"),
                           ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-cache")]


def test_image_layout_matches_where_the_shard_looks():
    """The Dockerfile copies clients/js/src to the path CLIENT_DIR names relative to shard/."""
    assert CLIENT_DIR == ROOT / "clients" / "js" / "src"
    assert DEMO_PAGE.is_file()
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert "COPY clients/js/src clients/js/src" in dockerfile and "COPY shard shard" in dockerfile
