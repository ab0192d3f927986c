"""Cap'n Web RPC (npm `capnweb`'s wire protocol) to a share server's `/rpc/share`, client side:
over HTTP batch and over WebSocket. The protocol itself is in `syncd.wire.capnweb`."""

from __future__ import annotations

from .batch import CapnwebBatchTransport
from .ws import CapnwebWsTransport

__all__ = ["CapnwebBatchTransport", "CapnwebWsTransport"]
