"""The front door's pure part: registry entries → nginx upstream → config, hostile entries skipped."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from common.registry import ShardInfo
from devstack.frontdoor import Layout, backends, find_nginx, render, upstream_addr


def _info(sid: str, ws: str, state: str = "live") -> ShardInfo:
    return ShardInfo(sid, "127.0.0.1:9701", ws, 1, 2, 0, 0, state=state)


def test_upstream_addr_accepts_only_what_a_shard_publishes():
    """ws://host:port/ws becomes host:port; anything that could inject nginx syntax is refused."""
    assert upstream_addr("ws://127.0.0.1:8701/ws") == "127.0.0.1:8701"
    assert upstream_addr("ws://shard-1.internal:8701/ws") == "shard-1.internal:8701"
    assert upstream_addr("ws://[::1]:8701/ws") == "[::1]:8701"
    for bad in ("", "ws://127.0.0.1/ws", "ws://127.0.0.1:0/ws", "ws://127.0.0.1:70000/ws",
                "http://127.0.0.1:8701/ws", "ws://127.0.0.1:8701/", "ws://a;b:1/ws",
                "ws://a b:1/ws", "ws://a}:1/ws", "ws://127.0.0.1:8701/ws; include /etc/x;",
                "ws://127.0.0.1:8701/ws\n", "wss://127.0.0.1:8701/ws"):
        assert upstream_addr(bad) is None, bad


def test_backends_keep_live_shards_with_valid_addresses_sorted():
    """Draining, drained and malformed entries are left out; the rest sorted by shard id."""
    live = {
        "C": _info("C", "ws://127.0.0.1:8703/ws"),
        "A": _info("A", "ws://127.0.0.1:8701/ws"),
        "B": _info("B", "ws://127.0.0.1:8702/ws", state="draining"),
        "D": _info("D", "ws://127.0.0.1:8704/ws", state="drained"),
        "E": _info("E", "ws://evil;:1/ws"),
        "F": _info("F", "ws://127.0.0.1:8706/ws", state="weird"),
    }
    assert backends(live) == (("A", "127.0.0.1:8701"), ("C", "127.0.0.1:8703"))
    assert backends({}) == ()


def test_render_lists_every_backend_and_answers_503_without_any(tmp_path):
    """The config names each backend under least_conn with next-upstream on 503 and /healthz names
    its generation; with none, every proxied route and /healthz answer 503 and no upstream is written."""
    layout = Layout(tmp_path)
    two = render("127.0.0.1:8780", (("A", "127.0.0.1:8701"), ("B", "[::1]:8702")), layout, generation=7)
    assert "least_conn;" in two and "proxy_next_upstream error timeout http_503;" in two
    assert "    server 127.0.0.1:8701 max_fails=3 fail_timeout=5s;  # A\n" in two
    assert "    server [::1]:8702 max_fails=3 fail_timeout=5s;  # B\n" in two
    assert """return 200 '{"ok":true,"shards":["A","B"],"generation":7}\\n';""" in two
    assert f"pid {tmp_path / 'nginx.pid'};" in two and "/var/" not in two
    none = render("127.0.0.1:8780", (), layout)
    assert "upstream" not in none and "proxy_pass" not in none
    assert none.count("return 503 'no shard is accepting clients\\n';") == 3  # /ws, /, /client/
    assert """return 503 '{"ok":false,"shards":[],"generation":1}\\n';""" in none


@pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed (`make nginx`)")
@pytest.mark.parametrize("shards", [(), (("A", "127.0.0.1:8701"), ("B", "[::1]:8702"))])
def test_nginx_accepts_the_rendered_config(tmp_path: Path, shards):
    """`nginx -t` accepts the config with and without backends, as this user, with no /var path."""
    layout = Layout(tmp_path)
    layout.temp.mkdir()  # as the front door does; nginx makes the paths inside it
    layout.conf.write_text(render("127.0.0.1:1", shards, layout, user=""))
    check = subprocess.run([find_nginx(), "-e", "stderr", "-t", "-p", str(tmp_path), "-c",
                            str(layout.conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
