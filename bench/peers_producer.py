"""bench/producer.py, with each record's token also in a `centrifugo-channels` header.

One topic feeds every system of the peers benchmark with the same records:
the key is the token (shardcast's dispatcher and the Python floors route on
it), the value is the tick payload every client checks, and the header names
the same token as the channel for Centrifugo's Kafka consumer in *publication
data mode* (Centrifugo 6 publishes the record value as-is into the channels
that header lists). Nothing else about the producer changes: same rate
control, same payloads, same result file.
"""

from __future__ import annotations

import sys

from kafka import KafkaProducer

import bench.producer

CHANNELS_HEADER = "centrifugo-channels"


class HeaderProducer(KafkaProducer):
    """A KafkaProducer whose records carry their key (the token) as the channels header too.

    It also fetches the topic's metadata before bench.producer starts its clock: otherwise the
    first send blocks for it (a second or two on a busy core), the warm-up falls behind schedule
    and the measured phase starts with a catch-up burst, above the rate asked for.
    """

    topic = ""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        if self.topic:
            self.partitions_for(self.topic)

    def flush(self, timeout=None):
        """bench.producer flushes once, after its last record: say so, so the measured window
        ends here and not after the producer's shutdown."""
        super().flush(timeout)
        print("produced", flush=True)

    def send(self, topic, value=None, key=None, headers=None, **kw):
        return super().send(topic, value=value, key=key,
                            headers=[*(headers or []), (CHANNELS_HEADER, key)], **kw)


if __name__ == "__main__":
    HeaderProducer.topic = sys.argv[sys.argv.index("--topic") + 1] if "--topic" in sys.argv else ""
    bench.producer.KafkaProducer = HeaderProducer
    bench.producer.main()
