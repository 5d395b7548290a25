"""The `--ports-file` of shards and dispatchers: where each listener actually bound.

With port 0 the kernel picks a free port as the socket binds, so nothing can
take it between a check and the bind (what a "find a free port, pass it on"
scheme cannot avoid). The process then reports the ports it got, as one JSON
object, once every listener is bound; whoever started it reads the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_ports_file(path: str, ports: dict[str, int]) -> None:
    """Write `ports` as JSON to `path` atomically (a reader never sees half a file); no-op when
    `path` is empty."""
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ports, sort_keys=True))
    os.replace(tmp, target)
