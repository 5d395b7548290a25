"""Process configuration: flags over env vars over defaults, validated in one place."""

import subprocess
import sys

import pytest

from dispatcher.config import parse_args as dispatcher_args
from dispatcher.routing import Mode
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


@pytest.mark.parametrize("module", ["dispatcher", "shard"])
def test_help_lists_every_option_with_its_env_var(module):
    """`python -m <process> --help` documents each flag with its environment variable."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "SHARDCAST_REDIS_URL" in out and "--namespace" in out


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
