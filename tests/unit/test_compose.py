"""compose/ is checked against the code, since Docker cannot run here.

Every service command exists and accepts its flags and environment, ports
agree between the processes, nginx, Prometheus and health checks, and the
Grafana dashboard queries only metrics the code exports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from demo import producer
from demo.producer import METRIC_NAMES as PRODUCER_NAMES
from dispatcher import config as dispatcher_config
from dispatcher.metrics import NAMES as DISPATCHER_NAMES
from shard import config as shard_config
from shard.metrics import NAMES as SHARD_NAMES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PARSERS = {
    "dispatcher": dispatcher_config.parse_args,
    "shard": shard_config.parse_args,
    "demo.producer": lambda argv: producer.parser().parse_args(argv),
}


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _ours(spec: dict) -> dict[str, dict]:
    return {name: s for name, s in spec["services"].items() if s.get("image") == "shardcast:dev"}


REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")  # ${VAR:?message}: compose refuses to start without VAR


def _env(service: dict) -> dict[str, str]:
    """Compose interpolation: ${VAR:-default} with VAR unset, ${VAR:?msg} with VAR set by the operator."""
    env = service.get("environment") or {}
    out = {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    return {k: REQUIRED.sub(lambda m: _operator_value(m[1]), v) for k, v in out.items()}


def _operator_value(name: str) -> str:
    """What an operator would set for a required variable (long enough for any secret's minimum)."""
    return f"{name.lower()}-set-by-the-operator-{'x' * 32}"


def _known_env(module: str, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        PARSERS[module](["--help"])
    return set(re.findall(r"env\s+(\w+);", capsys.readouterr().out))


def _config(name: str, service: dict, monkeypatch):
    """Parse the service's command and environment exactly as the process would."""
    cmd = service["command"]
    assert cmd[:2] == ["python", "-m"], name
    with monkeypatch.context() as m:
        for k, v in _env(service).items():
            m.setenv(k, v)
        return PARSERS[cmd[2]](cmd[3:])


def test_every_service_command_exists_and_accepts_its_flags_and_env(spec, monkeypatch, capsys):
    """Each of our services runs a real module whose parser takes its flags and env names."""
    ours = _ours(spec)
    assert {s["command"][2] for s in ours.values()} == set(PARSERS)
    assert len([n for n in ours if n.startswith("shard-")]) == 3
    assert len([n for n in ours if n.startswith("dispatcher-")]) == 2
    for name, service in ours.items():
        module = service["command"][2]
        assert (ROOT / module.replace(".", "/")).with_suffix(".py").exists() or \
            (ROOT / module / "__main__.py").exists(), name
        unknown = set(_env(service)) - _known_env(module, capsys)
        assert not unknown, f"{name}: env names the code does not read: {unknown}"
        _config(name, service, monkeypatch)  # raises SystemExit on a bad flag or value


def test_dispatchers_share_a_group_and_reach_kafka_and_redis(spec, monkeypatch):
    """Both dispatchers join one consumer group on the topic kafka-init creates, at real hosts."""
    services = spec["services"]
    cfgs = [_config(n, s, monkeypatch) for n, s in _ours(spec).items() if n.startswith("dispatcher-")]
    assert len({c.group for c in cfgs}) == 1 and len({c.dispatcher_id for c in cfgs}) == 2
    init = services["kafka-init"]["command"]
    assert init[init.index("--topic") + 1] == cfgs[0].topic
    prod = _config("producer", services["producer"], monkeypatch)
    assert prod.topic == cfgs[0].topic
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    for c in (*cfgs, prod):
        assert f"PLAINTEXT://{c.kafka_bootstrap}" == advertised
    for c in cfgs:
        assert urlparse(c.redis_url).hostname in services
        assert c.admin_token and c.admin_host == "0.0.0.0"  # beyond loopback only with a token
        assert urlparse(c.redis_url).username == "shardcast" and c.ingest_secret
    assert services["dispatcher-1"]["ports"] == [f"127.0.0.1:8790:{cfgs[0].admin_port}"]


def test_ports_agree_across_nginx_prometheus_and_health_checks(spec, monkeypatch):
    """nginx upstreams, Prometheus targets and health checks use the ports the processes bind."""
    ours = _ours(spec)
    metrics_port = {}
    for name, service in ours.items():
        cfg = _config(name, service, monkeypatch)
        port = {"shard": "ws_port", "dispatcher": "http_port", "demo.producer": "metrics_port"}
        metrics_port[name] = getattr(cfg, port[service["command"][2]])
        if name.startswith("shard-"):
            assert cfg.advertise_host == name  # dispatchers dial the registry's address
            assert cfg.host == "0.0.0.0"
        health = " ".join(service.get("healthcheck", {}).get("test", []))
        if name != "producer":
            assert f"127.0.0.1:{metrics_port[name]}/healthz" in health, name
    nginx = (COMPOSE / "nginx" / "nginx.conf").read_text()
    upstream = set(re.findall(r"server (shard-\d+):(\d+)", nginx))
    assert upstream == {(n, str(p)) for n, p in metrics_port.items() if n.startswith("shard-")}
    prom = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{p}" for n, p in metrics_port.items()}


def test_dashboard_queries_only_exported_metrics(spec):
    """Every metric a Grafana panel queries is one the code exports."""
    dash = json.loads((COMPOSE / "grafana" / "dashboards" / "shardcast.json").read_text())
    exported = set(DISPATCHER_NAMES) | set(SHARD_NAMES) | set(PRODUCER_NAMES)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket|sum|count)$", "", m) for e in exprs
            for m in re.findall(r"shardcast_\w+", e)}
    assert used and used <= exported, used - exported
    for wanted in ("connections", "frames_written", "delivery_latency_seconds", "deliveries",
                   "queue_depth", "consumer_lag_records"):
        assert any(wanted in m for m in used), f"dashboard lacks {wanted}"
    prov = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/shardcast.yml").read_text())
    mount = next(v for v in spec["services"]["grafana"]["volumes"] if "dashboards:" in v)
    assert mount.split(":")[1] == prov["providers"][0]["options"]["path"]


def test_dependencies_image_and_make_targets_are_consistent(spec):
    """depends_on names real services, the image has every package, make drives this file."""
    services = spec["services"]
    for name, service in services.items():
        deps = service.get("depends_on") or {}
        assert set(deps) <= set(services), name
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    for package in ("common", "dispatcher", "shard", "demo", "protos"):
        assert f"COPY {package} {package}" in dockerfile
    assert "requirements.txt" in dockerfile and "grpc_tools.protoc" in dockerfile
    makefile = (ROOT / "Makefile").read_text()
    for target in ("compose-up", "compose-down"):
        assert re.search(rf"^{target}:.*\n\t.*compose/docker-compose.yml", makefile, re.M), target


def test_no_default_secrets_and_the_shard_grpc_port_is_never_published(spec, monkeypatch):
    """Secrets have no defaults (compose refuses to start), shards and dispatchers share the ingest
    secret, the shards' gRPC port is published nowhere, and the admin API only on the host's loopback."""
    text = (COMPOSE / "docker-compose.yml").read_text()
    secrets = ("SHARDCAST_ADMIN_TOKEN", "SHARDCAST_INGEST_SECRET", "SHARDCAST_REDIS_PASSWORD")
    assert "change-me" not in text
    for name in secrets:
        assert re.search(rf"\$\{{{name}:-", text) is None, f"{name} has a default"
        assert f"${{{name}:?" in text, f"{name} is not required"
    ours = _ours(spec)
    shards = {n: _config(n, s, monkeypatch) for n, s in ours.items() if n.startswith("shard-")}
    dispatchers = [_config(n, s, monkeypatch) for n, s in ours.items() if n.startswith("dispatcher-")]
    shared = {c.ingest_secret for c in (*shards.values(), *dispatchers)}
    assert shared == {_operator_value("SHARDCAST_INGEST_SECRET")}
    grpc_ports = {str(c.grpc_port) for c in shards.values()}
    for name, service in spec["services"].items():
        published = [str(p).split(":")[-1] for p in service.get("ports") or []]
        assert not grpc_ports & set(published), f"{name} publishes a shard gRPC port"
        assert all(str(p).count(":") == 2 for p in service.get("ports") or [] if "8790" in str(p))
    assert all(not s.get("ports") for n, s in ours.items() if n.startswith("shard-"))


def test_redis_runs_with_an_acl_user_and_the_default_user_off(spec):
    """Redis gets the `shardcast` ACL user (its namespace only, no dangerous commands), no default user."""
    redis = spec["services"]["redis"]
    script = " ".join(redis["command"])
    assert "user default off" in script and "--aclfile" in script
    assert "user shardcast on >%s ~shardcast:* &shardcast:* +@all -@dangerous" in script
    assert "$$SHARDCAST_REDIS_PASSWORD" in script  # from the environment, never a literal
    assert "--user shardcast" in " ".join(redis["healthcheck"]["test"])
