"""Runs the JavaScript client's own unit tests (`npm test` in clients/js: Node's built-in runner)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"


def test_js_client_unit_tests_pass():
    """Every `node --test` test of clients/js passes (pure core and adapter logic, no network)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JS client's unit tests need Node >= 20 (make node-deps)")
    npm = shutil.which("npm")
    cmd = [npm, "test", "--silent"] if npm else [node, "--test", "test/"]
    out = subprocess.run(cmd, cwd=JS_DIR, capture_output=True, text=True, timeout=300, check=False)
    report = out.stdout + out.stderr
    assert out.returncode == 0, report[-6000:]
    assert "# fail 0" in report, report[-6000:]
