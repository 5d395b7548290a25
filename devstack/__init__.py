"""Local stack without Docker: real Kafka (Maven jars, KRaft) and redis-server, plus our processes.

Used by `make run`, the test fixtures and the benchmarks, so all three start
the same things the same way.
"""
