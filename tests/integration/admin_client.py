"""Test-side gRPC client of the dispatcher's admin API (tests may use the generated stubs)."""

from __future__ import annotations

import grpc
from shardcast.v1 import admin_pb2, admin_pb2_grpc

pb = admin_pb2


class Admin:
    """Typed calls with optional bearer token; each returns the protobuf answer."""

    def __init__(self, target: str, token: str = "", credentials: grpc.ChannelCredentials | None = None,
                 ) -> None:
        self.channel = (grpc.secure_channel(target, credentials) if credentials
                        else grpc.insecure_channel(target))
        self.stub = admin_pb2_grpc.DispatcherAdminStub(self.channel)
        self.md = [("authorization", f"Bearer {token}")] if token else []

    def shards(self) -> dict[str, pb.ShardStatus]:
        return {s.shard_id: s for s in self.stub.ListShards(pb.ListShardsRequest(), metadata=self.md,
                                                             timeout=10).shards}

    def stats(self) -> pb.GetStatsResponse:
        return self.stub.GetStats(pb.GetStatsRequest(), metadata=self.md, timeout=10)

    def lookup(self, token: str) -> pb.LookupTokenResponse:
        return self.stub.LookupToken(pb.LookupTokenRequest(token=token), metadata=self.md, timeout=10)

    def set_mode(self, mode: int) -> pb.SetDispatchModeResponse:
        return self.stub.SetDispatchMode(pb.SetDispatchModeRequest(mode=mode), metadata=self.md,
                                         timeout=10)

    def drain(self, shard_id: str, window_s: float) -> list[pb.DrainProgress]:
        req = pb.DrainShardRequest(shard_id=shard_id, window_s=window_s)
        return list(self.stub.DrainShard(req, metadata=self.md, timeout=60))

    def publish(self, token: str, payload: bytes) -> pb.PublishResponse:
        return self.stub.Publish(pb.PublishRequest(token=token, payload=payload), metadata=self.md,
                                 timeout=30)

    def close(self) -> None:
        self.channel.close()
