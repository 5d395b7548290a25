"""shardcast dispatcher: Kafka → local routing table → one gRPC stream per shard."""
