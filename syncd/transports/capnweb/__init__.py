"""Cap'n Web RPC (npm `capnweb`'s wire protocol) to a share server's `/rpc/share`: the codec,
the message framing, transports over HTTP batch and WebSocket, and the receiving session
`syncd serve` answers with."""

from __future__ import annotations

from .batch import CapnwebBatchTransport
from .codec import UNDEFINED, BigInt, CodecError, JsError
from .ws import CapnwebWsTransport

__all__ = [
    "UNDEFINED",
    "BigInt",
    "CapnwebBatchTransport",
    "CapnwebWsTransport",
    "CodecError",
    "JsError",
]
