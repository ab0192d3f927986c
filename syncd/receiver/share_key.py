"""The optional key a receiver can demand before it creates shares (`x-opencode-share-key`)."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

from ..wire.keys import KEY_HEADER


def key_problem(headers: Headers, key: str | None) -> str | None:
    """Why a request fails the key check (a message for a 401), or None when it passes."""
    if key is None:
        return None
    given = headers.get(KEY_HEADER)
    if given is None:
        return f"missing {KEY_HEADER} header: this receiver requires a key"
    if not hmac.compare_digest(given.encode(), key.encode()):
        return f"wrong {KEY_HEADER} header"
    return None
