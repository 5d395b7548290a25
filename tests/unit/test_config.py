"""Process configuration: flags over env vars over defaults, validated in one place."""

import argparse
import dataclasses
import os
import re
import subprocess
import sys

import pytest

from dispatcher import config as dispatcher_config
from dispatcher.config import parse_args as dispatcher_args
from dispatcher.routing import Mode
from shard import config as shard_config
from shard.config import parse_args as shard_args


def test_flag_beats_env_beats_default(monkeypatch):
    """A flag overrides its SHARDCAST_* variable, which overrides the default."""
    monkeypatch.setenv("SHARDCAST_MODE", "broadcast")
    monkeypatch.setenv("SHARDCAST_MAX_POLL_RECORDS", "700")
    cfg = dispatcher_args(["--max-poll-records", "900"])
    assert cfg.mode is Mode.BROADCAST and cfg.max_poll_records == 900
    assert cfg.commit_interval_s == 1.0


def test_shard_config_validates_relations():
    """Inconsistent settings are refused at start-up, not discovered in production."""
    with pytest.raises(SystemExit):
        shard_args(["--heartbeat-s", "2", "--heartbeat-ttl-s", "3"])
    with pytest.raises(SystemExit):
        shard_args(["--ping-interval-s", "30", "--idle-timeout-s", "10"])
    with pytest.raises(SystemExit):
        shard_args(["--max-connections", "0"])
    with pytest.raises(SystemExit):
        dispatcher_args(["--max-poll-records", "5000", "--shard-queue-records", "100"])


def test_shard_advertises_bind_host_by_default():
    """The registry gets each port's bind host unless an advertise host is given."""
    cfg = shard_args(["--id", "s9", "--host", "127.0.0.2", "--grpc-host", "127.0.0.3", "--grpc-port", "9999"])
    assert cfg.grpc_addr == "127.0.0.3:9999" and cfg.ws_url == "ws://127.0.0.2:8701/ws"
    assert shard_args(["--grpc-host", "::1", "--grpc-port", "9999"]).grpc_addr == "[::1]:9999"
    assert shard_args(["--advertise-host", "shard9.local"]).grpc_addr.startswith("shard9.local:")


def _parser(parse_args, monkeypatch) -> argparse.ArgumentParser:
    """The parser a config's parse_args builds, caught as it is about to parse."""
    caught = []

    def catch(self, *args, **kw):
        caught.append(self)
        raise SystemExit(0)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", catch)
        with pytest.raises(SystemExit):
            parse_args([])
    return caught[0]


# Config fields fed by a flag of another name (every other field is its flag's dest).
RENAMED = {"shard_id": "id", "dispatcher_id": "id", "grpc_advertise_host": "advertise_host",
           "max_subscriptions_per_client": "max_subscriptions", "ingest_window_batches": "ingest_window",
           "verifier": "jwt_secret"}
ENV_OF_ID = {"shard": "SHARDCAST_SHARD_ID", "dispatcher": "SHARDCAST_DISPATCHER_ID"}


@pytest.mark.parametrize("module, parse_args, config_cls", [
    ("dispatcher", dispatcher_args, dispatcher_config.DispatcherConfig),
    ("shard", shard_args, shard_config.ShardConfig),
])
def test_help_lists_every_option_with_its_env_var(module, parse_args, config_cls, monkeypatch):
    """`python -m <process> --help` documents every flag of the parser with its own SHARDCAST_* variable,
    and every config field comes from a flag."""
    parser = _parser(parse_args, monkeypatch)
    options = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    dests = {a.dest for a in options}
    assert [f.name for f in dataclasses.fields(config_cls) if RENAMED.get(f.name, f.name) not in dests] == []
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    # One entry per option: from its line in the help to the next option's line, whitespace folded.
    entries = {m.group(1): " ".join(m.group(2).split())
               for m in re.finditer(r"^  (?:-h, )?(--[a-z0-9-]+)(.*?)(?=^  -|\Z)", out, re.M | re.S)}
    assert sorted(entries) == sorted(["--help", *(a.option_strings[0] for a in options)])
    for action in options:
        flag = action.option_strings[0]
        env = ENV_OF_ID[module] if flag == "--id" else "SHARDCAST_" + flag[2:].upper().replace("-", "_")
        assert re.search(rf"\benv {env}\b", entries[flag]), (flag, entries[flag])


def test_free_port_never_repeats():
    """free_port hands out distinct ports even when the kernel offers a released one again."""
    from devstack.procs import free_port

    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200


def test_admin_api_beyond_loopback_requires_a_token(monkeypatch):
    """Binding the admin API to a non-loopback address without an admin token is refused."""
    with pytest.raises(SystemExit):
        dispatcher_args(["--admin-host", "0.0.0.0", "--admin-insecure"])
    monkeypatch.setenv("SHARDCAST_ADMIN_TOKEN", "t0k")
    cfg = dispatcher_args(["--admin-host", "0.0.0.0", "--admin-insecure"])
    assert cfg.admin_host == "0.0.0.0" and "t0k" not in repr(cfg)  # the secret stays out of logs
    monkeypatch.delenv("SHARDCAST_ADMIN_TOKEN")
    assert dispatcher_args(["--admin-host", "::1"]).admin_token == ""
    with pytest.raises(SystemExit):
        dispatcher_args(["--admin-tls-cert", "c.pem"])  # a cert needs its key


def test_shard_advises_when_max_behind_reaches_the_write_timeout():
    """--max-behind-s at or above --write-timeout-s starts but is named as advice; the defaults are clean."""
    assert shard_config.advisories(shard_args(["--id", "A"])) == []
    same = shard_config.advisories(shard_args(["--id", "A", "--max-behind-s", "10",
                                               "--write-timeout-s", "10"]))
    assert len(same) == 1 and same[0].startswith("--max-behind-s (10) is not below --write-timeout-s (10)")
    assert shard_config.advisories(shard_args(["--id", "A", "--max-behind-s", "9.5"])) == []
