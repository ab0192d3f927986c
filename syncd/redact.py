"""The one rule that masks credentials in text syncd stores or shows (state rows, dead-letter
reasons, `status`, /health, logs, error messages), whatever a receiver echoes back.

Masked: the secrets a caller names (a call's share secret), every secret registered for the
process (the key), and credentials recognisable by their form whose value syncd never knew:
an Authorization scheme's token, the value of a field or header named like a credential (a
url's `password=` included), a password in a url's user info, a JWT.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

MASK = "***"
# Shorter values would mask ordinary words and numbers everywhere.
MIN_SECRET_LENGTH = 4

_FORMS = (
    # `Authorization: Bearer <token>` and `Basic <credentials>`, wherever they are quoted.
    re.compile(r"\b(?P<label>(?:Bearer|Basic)\s+)[A-Za-z0-9\-._~+/]{4,}=*", re.IGNORECASE),
    # `secret: x`, `"key": "x"`, `password=x`, `x-opencode-share-key: x` (JSON, headers, urls).
    re.compile(
        r"""(?P<label>["']?\b(?:secret|key|token|password|passwd|authorization|api[-_]?key)"""
        r"""["']?\s*[:=]\s*["']?)(?!\*\*\*)[^\s"',;&}\]]+""",
        re.IGNORECASE,
    ),
    # A password in a url's user info: `postgresql://user:password@host`.
    re.compile(r"(?P<label>\b[a-z][a-z0-9+.-]*://[^\s/:@]*:)[^\s/@]+(?=@)", re.IGNORECASE),
    # A JSON Web Token: header.payload.signature, the header always starting `{"` in base64.
    re.compile(r"(?P<label>)\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
)

_registered: set[str] = set()
_registered_lock = threading.Lock()


def register(secret: str | None) -> None:
    """Mask `secret` wherever it appears in any text scrubbed from now on (the key)."""
    if secret and len(secret) >= MIN_SECRET_LENGTH:
        with _registered_lock:
            _registered.add(secret)


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with `secrets`, every registered secret and every credential-shaped value masked."""
    with _registered_lock:
        known = {*_registered}
    known.update(s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH)
    for secret in sorted(known, key=len, reverse=True):  # a longer one may contain a shorter
        if secret in text:
            text = text.replace(secret, MASK)
    for form in _FORMS:
        text = form.sub(lambda match: match["label"] + MASK, text)
    return text
