"""Entry point: `python -m shard`. gevent patching must come before every other import."""

from gevent import monkey

monkey.patch_all()

import grpc.experimental.gevent as grpc_gevent  # noqa: E402

grpc_gevent.init_gevent()  # before any gRPC object exists, or RPCs hang

from shard.app import main  # noqa: E402

if __name__ == "__main__":
    main()
