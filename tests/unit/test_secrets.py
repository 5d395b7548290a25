"""Secrets come from the environment or files, never argv; every edge refuses to start unprotected."""

from __future__ import annotations

import pytest

from common.cli import host_port, redact_url, url_has_password
from dispatcher import admin as admin_cli
from dispatcher.config import parse_args as dispatcher_args
from shard.config import parse_args as shard_args


@pytest.fixture(autouse=True)
def _no_secrets_in_env(monkeypatch):
    for name in ("SHARDCAST_ADMIN_TOKEN", "SHARDCAST_INGEST_SECRET", "SHARDCAST_REDIS_URL",
                 "SHARDCAST_ADMIN_INSECURE", "SHARDCAST_ADMIN_TOKEN_FILE",
                 "SHARDCAST_INGEST_SECRET_FILE", "SHARDCAST_REDIS_URL_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("parse, argv", [
    (dispatcher_args, ["--admin-token", "t0k"]),
    (dispatcher_args, ["--ingest-secret", "s3cret"]),
    (shard_args, ["--ingest-secret", "s3cret"]),
    (admin_cli.main, ["--token", "t0k", "shards"]),
])
def test_secret_values_on_argv_are_refused(parse, argv, capsys):
    """A secret given as a flag value (visible in `ps`) stops the process with a pointer to env/file."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "visible to every local user" in err and "SHARDCAST_" in err and "-file" in err


def test_secrets_are_read_from_env_or_files(tmp_path, monkeypatch):
    """The admin token, the ingest secret and the Redis URL come from $VAR or from --...-file."""
    monkeypatch.setenv("SHARDCAST_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("SHARDCAST_INGEST_SECRET", "ingest-env")
    cfg = dispatcher_args([])
    assert (cfg.admin_token, cfg.ingest_secret) == ("from-env", "ingest-env")
    token, ingest, url = tmp_path / "token", tmp_path / "ingest", tmp_path / "url"
    token.write_text("from-file\n")  # a trailing newline (echo, editors) is not part of it
    ingest.write_text("ingest-file")
    url.write_text("rediss://shardcast:pw@redis.example:6380/0\n")
    cfg = dispatcher_args(["--admin-token-file", str(token), "--ingest-secret-file", str(ingest),
                           "--redis-url-file", str(url)])
    assert (cfg.admin_token, cfg.ingest_secret) == ("from-file", "ingest-file")
    assert cfg.redis_url == "rediss://shardcast:pw@redis.example:6380/0"
    shard = shard_args(["--ingest-secret-file", str(ingest), "--redis-url-file", str(url)])
    assert shard.ingest_secret == "ingest-file" and shard.redis_url.startswith("rediss://")
    for secret in ("from-file", "ingest-file", "pw@"):
        assert secret not in repr(cfg) and secret not in repr(shard)  # kept out of logs
    with pytest.raises(SystemExit):
        dispatcher_args(["--admin-token-file", str(tmp_path / "missing")])


def test_redis_url_with_a_password_on_argv_is_refused(capsys, monkeypatch):
    """A Redis URL carrying a password on argv is an error naming the safe ways; env and no password pass."""
    with pytest.raises(SystemExit):
        shard_args(["--redis-url", "redis://shardcast:pw@127.0.0.1:6379/0"])
    err = capsys.readouterr().err
    assert "SHARDCAST_REDIS_URL" in err and "--redis-url-file" in err
    assert shard_args(["--redis-url", "redis://127.0.0.1:6379/0"]).redis_url == "redis://127.0.0.1:6379/0"
    monkeypatch.setenv("SHARDCAST_REDIS_URL", "redis://shardcast:pw@127.0.0.1:6379/0")
    assert shard_args([]).redis_url.endswith("@127.0.0.1:6379/0")
    assert url_has_password("rediss://u:p@h:1/0") and not url_has_password("redis://u@h:1/0")
    assert redact_url("rediss://u:p4ss@h:1/0") == "rediss://u:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"


def test_shard_grpc_port_beyond_loopback_needs_the_secret_or_mutual_tls(monkeypatch, tmp_path):
    """Without an ingest secret (or client-certificate TLS) the gRPC port binds only to loopback."""
    assert shard_args([]).grpc_host == "127.0.0.1"  # apart from --host, loopback by default
    assert shard_args(["--host", "0.0.0.0"]).grpc_host == "127.0.0.1"
    with pytest.raises(SystemExit):
        shard_args(["--grpc-host", "0.0.0.0"])
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    mtls = shard_args(["--grpc-host", "0.0.0.0", "--grpc-tls-cert", str(pem), "--grpc-tls-key", str(pem),
                       "--grpc-tls-client-ca", str(pem)])
    assert mtls.grpc_tls_client_ca == str(pem) and mtls.ingest_secret == ""
    with pytest.raises(SystemExit):
        shard_args(["--grpc-tls-client-ca", str(pem)])  # mutual TLS needs the shard's own cert
    with pytest.raises(SystemExit):
        shard_args(["--grpc-tls-cert", str(pem), "--grpc-tls-key", str(tmp_path / "missing.pem")])
    monkeypatch.setenv("SHARDCAST_INGEST_SECRET", "s3cret")
    assert shard_args(["--grpc-host", "0.0.0.0"]).ingest_secret == "s3cret"


def test_admin_api_beyond_loopback_needs_tls_unless_insecure_is_given(monkeypatch, tmp_path):
    """Off loopback the admin API needs TLS, or an explicit --admin-insecure; loopback needs neither."""
    monkeypatch.setenv("SHARDCAST_ADMIN_TOKEN", "t0k")
    with pytest.raises(SystemExit):
        dispatcher_args(["--admin-host", "0.0.0.0"])
    assert dispatcher_args(["--admin-host", "0.0.0.0", "--admin-insecure"]).admin_insecure
    monkeypatch.setenv("SHARDCAST_ADMIN_INSECURE", "1")
    assert dispatcher_args(["--admin-host", "0.0.0.0"]).admin_insecure
    monkeypatch.delenv("SHARDCAST_ADMIN_INSECURE")
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    tls = dispatcher_args(["--admin-host", "0.0.0.0", "--admin-tls-cert", str(pem),
                           "--admin-tls-key", str(pem)])
    assert not tls.admin_insecure
    assert dispatcher_args(["--admin-host", "::1"]).admin_host == "::1"


def test_dispatcher_shard_tls_flags_go_together(tmp_path):
    """A client certificate needs its key and the CA that verifies shards."""
    pem = tmp_path / "x.pem"
    pem.write_text("x")
    with pytest.raises(SystemExit):
        dispatcher_args(["--shard-tls-cert", str(pem), "--shard-tls-key", str(pem)])
    with pytest.raises(SystemExit):
        dispatcher_args(["--shard-tls-ca", str(pem), "--shard-tls-cert", str(pem)])
    cfg = dispatcher_args(["--shard-tls-ca", str(pem), "--shard-tls-cert", str(pem),
                           "--shard-tls-key", str(pem)])
    assert cfg.shard_tls_cert == str(pem)


def test_ipv6_literals_are_bracketed_in_host_port():
    """`::1` binds and dials as `[::1]:port`; names and IPv4 stay as they are."""
    assert host_port("::1", 8790) == "[::1]:8790"
    assert host_port("127.0.0.1", 1) == "127.0.0.1:1" and host_port("shard-1", 9701) == "shard-1:9701"
