"""Python client of shardcast (protocol ``shardcast.v1``): reconnects, resubscribes, drops duplicates.

`Client` runs the connection on a background thread (`for u in c.updates()`);
`AsyncClient` runs it on asyncio (`async for u in c`). Both drive the same
pure `Session`, so they decide alike: see README.md in this directory.
"""

from shardcast_client.async_client import AsyncClient
from shardcast_client.codes import SUBPROTOCOL, Close, ErrorCode, Policy, close_policy
from shardcast_client.config import ClientConfig
from shardcast_client.core import (
    AuthFailedEvent,
    DuplicateEvent,
    ErrorEvent,
    GapEvent,
    StateEvent,
    Stats,
    UnsubscribedEvent,
    Update,
)
from shardcast_client.errors import AuthFailedError, ClientStoppedError
from shardcast_client.sync_client import Client

__all__ = [
    "SUBPROTOCOL",
    "AsyncClient",
    "AuthFailedError",
    "AuthFailedEvent",
    "Client",
    "ClientConfig",
    "ClientStoppedError",
    "Close",
    "DuplicateEvent",
    "ErrorCode",
    "ErrorEvent",
    "GapEvent",
    "Policy",
    "StateEvent",
    "Stats",
    "UnsubscribedEvent",
    "Update",
    "close_policy",
]
__version__ = "1.0.0"
