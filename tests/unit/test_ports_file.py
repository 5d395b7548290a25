"""The --ports-file our servers write once every listener is bound (common.ports_file)."""

from __future__ import annotations

import json

from common.ports_file import write_ports_file
from dispatcher.config import parse_args as dispatcher_args
from shard.config import parse_args as shard_args


def test_ports_file_is_replaced_whole_and_leaves_no_temporary_file(tmp_path):
    """The file holds exactly the ports given, replaces an older one whole, and no temporary is left."""
    path = tmp_path / "ports.json"
    path.write_text('{"ws_port": 1, "stale": 2}')
    write_ports_file(str(path), {"ws_port": 40001, "grpc_port": 40002})
    assert json.loads(path.read_text()) == {"ws_port": 40001, "grpc_port": 40002}
    assert [p.name for p in tmp_path.iterdir()] == ["ports.json"]


def test_no_ports_file_without_a_path(tmp_path, monkeypatch):
    """An empty --ports-file (the default) writes nothing anywhere."""
    monkeypatch.chdir(tmp_path)
    write_ports_file("", {"http_port": 1})
    assert list(tmp_path.iterdir()) == []


def test_port_0_and_the_ports_file_come_from_flags_or_the_environment(monkeypatch):
    """Port 0 is accepted for every listener; --ports-file falls back to SHARDCAST_PORTS_FILE."""
    s = shard_args(["--ws-port", "0", "--grpc-port", "0", "--ports-file", "/tmp/s.json"])
    assert (s.ws_port, s.grpc_port, s.ports_file) == (0, 0, "/tmp/s.json")
    monkeypatch.setenv("SHARDCAST_PORTS_FILE", "/tmp/d.json")
    d = dispatcher_args(["--http-port", "0", "--admin-port", "0"])
    assert (d.http_port, d.admin_port, d.ports_file) == (0, 0, "/tmp/d.json")
    assert shard_args([]).ports_file == "/tmp/d.json"
    monkeypatch.delenv("SHARDCAST_PORTS_FILE")
    assert shard_args([]).ports_file == ""
