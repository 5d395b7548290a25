"""The demo page in headless Chromium on a real stack: snapshot then ticks, latency, badge, drain.

pytest owns the stack and the records; a Node script (clients/js/test/browser/demo.mjs, playwright-
core driving Debian's chromium) owns the browser. They talk in JSON lines: the script reports what
the page shows ({"event": …} on its stdout), the test tells it which records to wait for (stdin).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest

from shard.token import issue
from tests.integration.admin_client import Admin
from tests.integration.helpers import producer, wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
SCRIPT = JS / "test" / "browser" / "demo.mjs"
SCREENSHOT = ROOT / ".artifacts" / "demo.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NODE = shutil.which("node")
SECRET = secrets.token_urlsafe(32)
TOKENS = ("BTC-USD", "ETH-USD", "SOL-USD")
HOSTILE = "XSS-USD"  # watched too: its payload carries markup that must show as text
MARKUP = "<img src=x onerror=pwned=1>"
EVENT_TIMEOUT_S = 180  # the script's own waits give up after 90 s; this only catches a hung script


def _missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return "chromium is not installed (make chromium installs Debian's)"
    if NODE is None or not (JS / "node_modules" / "playwright-core").is_dir():
        return "node or clients/js/node_modules is missing (make node-deps installs them)"
    return None


class Browser:
    """The Node script as a child: JSON lines out of it go to a queue, commands go to its stdin."""

    def __init__(self, config: dict, log: Path) -> None:
        env = {**os.environ, "DEMO_BROWSER_CONFIG": json.dumps(config)}  # the page URL holds a JWT
        self.log = log
        self._err = log.open("w")
        self.proc = subprocess.Popen([NODE, str(SCRIPT)], cwd=JS, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1)
        self.events: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                self.events.put({"event": "text", "line": line.rstrip()})
        self.events.put({"event": "exit"})

    def next(self, name: str) -> dict:
        """The next event called `name`; the script's errors and exit fail the test with its story."""
        deadline = time.monotonic() + EVENT_TIMEOUT_S
        while True:
            try:
                ev = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} from the browser script in {EVENT_TIMEOUT_S}s; "
                                     f"stderr: {self._stderr()}") from None
            if ev["event"] == name:
                assert ev.get("pageErrors", []) == [], ev["pageErrors"]
                return ev
            if ev["event"] in ("error", "exit"):
                raise AssertionError(f"browser script failed waiting for {name!r}: "
                                     f"{json.dumps(ev)[:4000]}\nstderr: {self._stderr()}")

    def send(self, doc: dict) -> None:
        self.proc.stdin.write(json.dumps(doc) + "\n")
        self.proc.stdin.flush()

    def _stderr(self) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def close(self) -> int | None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "done"})
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
        self._err.close()
        return self.proc.returncode


def _price(i: int, rnd: int) -> float:
    return 100 + 10 * i + 1.25 * rnd  # exact in binary, so JS and Python print it alike


def _produce_round(p, topic: str, rnd: int) -> dict[str, tuple[int, float, int]]:
    """One record per watched token, demo-producer shaped, with its Kafka timestamp = ts_ms.

    Returns token → (offset, price, ts_ms) of the record just produced.
    """
    out = {}
    for i, token in enumerate((*TOKENS, HOSTILE)):
        ts = int(time.time() * 1000)
        price = _price(i, rnd)
        doc = {"token": token, "price": price, "bid": price - 0.25, "ask": price + 0.25, "size": 1.5,
               "seq": rnd, "ts_ms": ts}
        if token == HOSTILE:
            doc.update(price=MARKUP, bid="<b>bold</b>", size="<script>pwned=1</script>")
        meta = p.send(topic, key=token.encode(), value=json.dumps(doc).encode(), timestamp_ms=ts).get(30)
        out[token] = (meta.offset, price, ts)
    return out


def _check_ticks(ev: dict, sent: dict, kinds: list[str], url: str) -> None:
    """Every row shows its record of `sent` as a tick: price, flash, true producer → paint latency."""
    demo, dom = ev["demo"], ev["dom"]
    assert demo["state"] == "connected" and demo["url"] == url and dom["badge"] == "connected"
    for token in (*TOKENS, HOSTILE):
        row, (offset, price, ts) = demo["rows"][token], sent[token]
        cells = dom["rows"][token]["cells"]
        assert (row["offset"], row["kind"], row["kinds"]) == (offset, "tick", kinds), token
        assert row["latencyMs"] == row["paintedAt"] - ts and row["latencyMs"] >= 0, row
        assert cells[7] == str(row["latencyMs"]) and cells[5] == "tick" and cells[6] == str(len(kinds))
        assert row["flashes"] == len(kinds) and "flash" in dom["rows"][token]["classes"]
        if token != HOSTILE:
            assert (row["price"], cells[1]) == (price, f"{price:.4f}")
    hostile = dom["rows"][HOSTILE]["cells"]
    assert (hostile[1], hostile[2], hostile[4]) == (MARKUP, "<b>bold</b>", "<script>pwned=1</script>")
    assert dom["images"] == 0 and ev["pwned"] is False


def _get(port: int, path: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of a GET sent with `path` exactly as given (no normalising)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def test_shard_serves_the_page_and_only_the_client_folder_js_files(stack):
    """/ is the demo page, /client/<f>.js the client's own bytes; traversal and other files get 404."""
    port = stack.shard("A").ws_port
    status, ctype, body = _get(port, "/")
    assert (status, ctype) == (200, "text/html; charset=utf-8") and b'import("/client/index.js")' in body
    for name in ("index.js", "client.js"):
        assert _get(port, f"/client/{name}") == (200, "text/javascript; charset=utf-8",
                                                  (JS / "src" / name).read_bytes())
    for path in ("/client/index.d.ts", "/client/../shard/server.py", "/client/%2e%2e/package.json",
                 "/client/", "/client", "/client/nope.js", "/clients/js/src/index.js", "/demo.html"):
        assert _get(port, path)[0] == 404, path


@pytest.mark.skipif(_missing() is not None, reason=_missing() or "")
def test_demo_page_shows_snapshot_then_live_ticks_and_survives_a_drain(stack):
    """In Chromium: snapshots, then ticks with true latency, wire text as text; a drain moves it on."""
    stack.c.env["SHARDCAST_JWT_SECRET"] = SECRET
    # The page comes from A: A sees its own origin (allowed by default), B is told A's, once A has
    # bound its port (port 0, reported by A itself: no port is chosen first and bound later).
    a = stack.shard("A", "--auth", "jwt")
    page_origin = f"http://127.0.0.1:{a.ws_port}"
    shards = {"A": a, "B": stack.shard("B", "--auth", "jwt", "--allowed-origins", page_origin)}
    d = stack.dispatcher()
    p = producer(stack.kafka.bootstrap)
    first = _produce_round(p, stack.c.topic, 0)  # last values, for the snapshots
    wait_for(lambda: d.stats()["records_consumed"] == 4, timeout_s=60, what="round 0 consumed")
    urls = [shards[sid].ws_url for sid in ("A", "B")]
    token = issue(SECRET.encode(), [*TOKENS, HOSTILE], 3600)
    query = urlencode({"token": token, "tokens": ",".join((*TOKENS, HOSTILE)), "urls": ",".join(urls)})
    page = f"{page_origin}/?{query}"
    browser = Browser({"pageUrl": page, "chromium": CHROMIUM, "timeoutMs": 90000},
                      stack.c.logdir / "demo-browser.log")
    try:
        ev = browser.next("snapshots")  # nothing was produced since round 0: these are snapshots
        demo, dom = ev["demo"], ev["dom"]
        on = demo["url"]
        assert on in urls and demo["state"] == "connected" and dom["badge"] == "connected"
        assert "latency ms, producer → screen" in dom["headers"]
        for i, t in enumerate(TOKENS):
            row, cells = demo["rows"][t], dom["rows"][t]["cells"]
            assert (row["kinds"], row["offset"], row["price"]) == (["snapshot"], first[t][0], _price(i, 0))
            assert (cells[1], cells[5]) == (f"{_price(i, 0):.4f}", "snapshot")
            assert cells[7] == str(row["latencyMs"])
        kinds = ["snapshot"]
        for rnd in (1, 2):  # the prices move as records are produced
            sent = _produce_round(p, stack.c.topic, rnd)
            browser.send({"op": "expect", "label": f"round {rnd}",
                          "offsets": {t: v[0] for t, v in sent.items()}, "url": on})
            kinds.append("tick")
            _check_ticks(browser.next("seen"), sent, kinds, on)

        victim = "A" if on == urls[0] else "B"  # the client picks its first URL at random
        other = urls[1] if victim == "A" else urls[0]
        progress = Admin(d.admin_target).drain(victim, 1.0)
        assert progress[-1].done and progress[-1].closed == 1
        browser.send({"op": "connected", "url": other})
        history = browser.next("connected")["demo"]["badgeHistory"]
        assert history == ["connecting", "connected", "reconnecting", "connecting", "connected"]

        sent = _produce_round(p, stack.c.topic, 3)  # after the move: the resubscribed rows keep ticking
        browser.send({"op": "expect", "label": "after drain", "offsets": {t: v[0] for t, v in sent.items()},
                      "url": other})
        kinds.append("tick")  # the new shard's snapshot repeated a held offset: dropped as a duplicate
        ev = browser.next("seen")
        _check_ticks(ev, sent, kinds, other)
        assert ev["demo"]["counts"]["reconnects"] == 1

        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.unlink(missing_ok=True)
        browser.send({"op": "screenshot", "path": str(SCREENSHOT)})
        assert browser.next("screenshot")["path"] == str(SCREENSHOT)
        assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"demo page screenshot: {SCREENSHOT}")
    finally:
        code = browser.close()
        p.close(10)
    assert code == 0
