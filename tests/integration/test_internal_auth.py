"""Trust at the internal edges, on real servers: the shards' gRPC port, the admin bind, Redis ACL."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import grpc
import pytest
import redis
from shardcast.v1 import control_pb2, control_pb2_grpc, ingest_pb2, ingest_pb2_grpc

from tests.integration.admin_client import Admin
from tests.integration.helpers import WsClient, produce, producer, wait_for

pytestmark = pytest.mark.integration


def _fake_batch() -> ingest_pb2.DeliveryBatch:
    """What an intruder pushes: a tick for a token a client watches, far ahead of any real offset."""
    rec = ingest_pb2.Record(token="PWNED-USD", payload=b'{"price":0}', partition=0, offset=10**9,
                            produce_ts_ms=int(time.time() * 1000))
    return ingest_pb2.DeliveryBatch(seq=1, records=[rec])


def _refused_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def _deliver(channel: grpc.Channel, md: list) -> grpc.StatusCode:
    stub = ingest_pb2_grpc.ShardIngestStub(channel)
    return _refused_code(lambda: list(stub.Deliver(iter([_fake_batch()]), metadata=md, timeout=10)))


def _drain(channel: grpc.Channel, md: list) -> grpc.StatusCode:
    stub = control_pb2_grpc.ShardControlStub(channel)
    return _refused_code(lambda: list(stub.Drain(control_pb2.DrainRequest(window_s=0.1), metadata=md,
                                                 timeout=10)))


def _first_data(client: WsClient) -> dict:
    return json.loads(client.data_frames(1)[0])


def test_unauthenticated_deliver_and_drain_are_refused_and_reach_no_client(stack):
    """Deliver/Drain without the ingest secret get UNAUTHENTICATED; no fake tick, no drain happens."""
    a = stack.shard("A")
    d = stack.dispatcher()
    client = WsClient(a.ws_url)
    client.subscribe("PWNED-USD", "GOOD-1")
    wait_for(lambda: d.route("GOOD-1") == ["A"], what="GOOD-1 routed to A")
    secret = stack.c.env["SHARDCAST_INGEST_SECRET"]
    channel = grpc.insecure_channel(f"127.0.0.1:{a.grpc_port}")
    for md in ([], [("authorization", "Bearer wrong")], [("authorization", secret)],
               [("x-shardcast-ingest-secret", secret)]):
        assert _deliver(channel, md) == grpc.StatusCode.UNAUTHENTICATED, md
        assert _drain(channel, md) == grpc.StatusCode.UNAUTHENTICATED, md
    produce(producer(stack.kafka.bootstrap), stack.c.topic, [("GOOD-1", b'{"price":1}')])
    first = _first_data(client)  # a fake tick would have come before the real one
    assert (first["token"], first["data"]) == ("GOOD-1", {"price": 1})
    stats = a.stats()
    assert stats["records_received"] == 1 and stats["state"] == "live" and stats["connections"] == 1
    # The dispatcher, which has the secret, drains the shard through the admin API.
    progress = Admin(d.admin_target).drain("A", 0.1)
    assert progress[-1].done and progress[-1].closed == 1


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed(tmp: Path, ca: tuple[Path, Path], name: str, ext: str) -> tuple[Path, Path]:
    """A P-256 key and a certificate for it signed by `ca`, with extension line `ext`."""
    key, csr, cert, extfile = (tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.pem",
                               tmp / f"{name}.ext")
    extfile.write_text(ext + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj",
             f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "1", "-extfile", str(extfile), "-out", str(cert))
    return cert, key


def _pki(tmp: Path) -> dict[str, Path]:
    ca_cert, ca_key = tmp / "ca.pem", tmp / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-days", "1", "-subj", "/CN=shardcast-test-ca", "-keyout", str(ca_key), "-out", str(ca_cert))
    shard = _signed(tmp, (ca_cert, ca_key), "shard", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    client = _signed(tmp, (ca_cert, ca_key), "dispatcher", "extendedKeyUsage=clientAuth")
    return {"ca": ca_cert, "shard": shard[0], "shard_key": shard[1], "client": client[0],
            "client_key": client[1]}


def test_mutual_tls_dispatcher_with_a_certificate_delivers_a_caller_without_one_is_refused(
        stack, tmp_path):
    """With --grpc-tls-client-ca the dispatcher's client certificate is required; callers without fail."""
    pki = _pki(tmp_path)
    a = stack.shard("A", "--grpc-tls-cert", str(pki["shard"]), "--grpc-tls-key", str(pki["shard_key"]),
                    "--grpc-tls-client-ca", str(pki["ca"]))
    d = stack.dispatcher("targeted", "--shard-tls-ca", str(pki["ca"]), "--shard-tls-cert",
                         str(pki["client"]), "--shard-tls-key", str(pki["client_key"]))
    client = WsClient(a.ws_url)
    client.subscribe("TLS-1")
    wait_for(lambda: d.route("TLS-1") == ["A"], what="TLS-1 routed to A")
    produce(producer(stack.kafka.bootstrap), stack.c.topic, [("TLS-1", b'{"price":2}')])
    assert _first_data(client)["data"] == {"price": 2}
    secret_md = [("authorization", f"Bearer {stack.c.env['SHARDCAST_INGEST_SECRET']}")]
    target = f"127.0.0.1:{a.grpc_port}"
    no_cert = grpc.secure_channel(target, grpc.ssl_channel_credentials(pki["ca"].read_bytes()))
    plaintext = grpc.insecure_channel(target)
    for channel in (no_cert, plaintext):  # the right secret is not enough without a certificate
        assert _deliver(channel, secret_md) == grpc.StatusCode.UNAVAILABLE
        assert _drain(channel, secret_md) == grpc.StatusCode.UNAVAILABLE
    assert a.stats()["records_received"] == 1 and a.stats()["state"] == "live"
    assert d.stats()["shards"]["A"]["state"] == "ready"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_admin_api_binds_and_answers_on_ipv6_loopback(stack):
    """`--admin-host ::1` binds `[::1]:port` and serves the admin API there."""
    stack.shard("A")
    d = stack.dispatcher("targeted", "--admin-host", "::1")
    assert "A" in wait_for(lambda: Admin(f"[::1]:{d.admin_port}").shards(), what="A listed")[0]


def test_processes_run_as_a_redis_acl_user_confined_to_their_namespace(stack, redis_server):
    """With the ACL rules compose uses (namespace keys/channels, no dangerous commands), all works."""
    ns = stack.c.namespace
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", ns, "on", ">pw-" + ns, f"~{ns}:*", f"&{ns}:*", "+@all",
                          "-@dangerous")
    stack.c.redis_url = redis_server.url.replace("redis://", f"redis://{ns}:pw-{ns}@")
    try:
        a = stack.shard("A")
        d = stack.dispatcher()
        client = WsClient(a.ws_url)
        client.subscribe("ACL-1")
        wait_for(lambda: d.route("ACL-1") == ["A"], what="ACL-1 routed to A")
        produce(producer(stack.kafka.bootstrap), stack.c.topic, [("ACL-1", b'{"price":3}')])
        assert _first_data(client)["data"] == {"price": 3}
        assert d.stats()["registry_healthy"]
        confined = redis.Redis.from_url(stack.c.redis_url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            confined.get("elsewhere:key")
    finally:
        stack.close()  # our processes deregister (as the ACL user) before it goes
        admin.execute_command("ACL", "DELUSER", ns)
