"""``google.protobuf.Timestamp`` from the times the services keep (milliseconds since the epoch).

Only the runtime's well-known types, no generated stubs: it loads on every
protobuf runtime of the mesh, the NLU's 4.23 included.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def timestamp_ms(ms: int) -> Timestamp:
    """The instant ``ms`` milliseconds after the Unix epoch."""
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp
