"""shardcast WebSocket shard: gevent server holding clients, fed by the dispatcher over gRPC."""
