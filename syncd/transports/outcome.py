"""What a receiver's answer means for delivery: one classifier for every HTTP transport.

A call ends in an acknowledgement (the caller returns) or in one of the errors of `base`:
retry later, re-create a lost share, stop for a refused secret or an existing share, or
dead-letter the batch. Status codes, `Retry-After`, redirects and thrown-error messages are
read here and only here, and every message is scrubbed (`syncd.redact`) of the secrets the
call carried: a receiver may echo a request.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping

import httpx

from ..model import Share
from ..redact import scrub
from ..wire.keys import KEY_HEADER
from ..wire.text import excerpt
from .base import (
    DeliveryError,
    KeyRefusedError,
    OversizeSuspectedError,
    RejectedError,
    RetryableError,
    SecretRefusedError,
    ShareExistsError,
    ShareNotFoundError,
    ThrownError,
    UnsendableError,
)

# The thrown messages of opencode's share functions (`Share not found: ID` and friends), as a
# capnweb method wrapping them shows them; older servers said `Share not found` alone.
SHARE_FIELDS = ("id", "secret", "url")
# A body this large that meets a dropped connection may have been refused for its size.
LARGE_BODY = 1024 * 1024
_THROWN = (
    (re.compile(r"^Share not found\b"), ShareNotFoundError),
    (re.compile(r"^Share secret invalid\b|^Invalid secret\b"), SecretRefusedError),
    (re.compile(r"^Share already exists\b"), ShareExistsError),
)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when
    absent or not a finite number. The retry policy caps what it is given."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def unreachable(
    what: str, error: Exception, secrets: Iterable[str | None], *, sent: int = 0
) -> RetryableError:
    """A call that got no answer (connection refused, reset, timed out). A connection dropped
    while a body of `sent` bytes, larger than LARGE_BODY, was on its way: maybe refused by its
    size."""
    message = scrub(f"{what}: {type(error).__name__}: {error}", secrets)
    dropped = (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError)
    if sent > LARGE_BODY and isinstance(error, dropped):
        return OversizeSuspectedError(
            f"{message} (connection dropped while a {sent}-byte body was sent)"
        )
    return RetryableError(message)


def key_refused(what: str, has_key: bool, status: int, server_says: str) -> KeyRefusedError:
    """A 401 (any transport): name the missing or refused key header, never the key."""
    if has_key:
        problem = f"the receiver refuses the key ({KEY_HEADER})"
    else:
        problem = f"the receiver requires a key ({KEY_HEADER}) and none is configured"
    return KeyRefusedError(
        f"{what}: {status} {server_says}: {problem}; set key in the config file "
        "(or OPENCODE_SHARE_RPC_KEY), then reload syncd (SIGHUP)"
    )


def refusal(
    what: str,
    status: int,
    headers: Mapping[str, str],
    body: str,
    *,
    secrets: Iterable[str | None] = (),
    key: str | None = None,
    share_call: bool = False,
) -> DeliveryError:
    """The error a non-2xx answer means. `share_call`: the call names an existing share, so
    404 means the share is gone and 403 that its secret is refused (the richer contract of
    older share workers and `syncd serve`), not a wrong url."""
    secrets = [*secrets, key]
    server_says = excerpt(scrub(body, secrets))
    if 300 <= status < 400:
        # Not followed (the secret would go along), and not the batch's fault: retried, so the
        # items wait in the state until url names the final address.
        location = scrub(headers.get("location", "nowhere"), secrets)
        return RetryableError(
            f"{what}: receiver redirects ({status}) to {location}; "
            "set url to the final address (redirects are not followed)"
        )
    if status == 401:
        return key_refused(what, key is not None, status, server_says)
    if status == 413:
        return UnsendableError(f"{what}: 413: larger than the receiver accepts: {server_says}")
    if share_call and status == 404:
        return ShareNotFoundError(f"{what}: share not found (404): {server_says}")
    if share_call and status == 403:
        return SecretRefusedError(f"{what}: share secret refused (403): {server_says}")
    if status == 429 or status >= 500:
        # opencode's server answers every thrown error (share not found, secret invalid,
        # already exists) as a bare 500: it may be a passing failure or a permanent one, and
        # only the delivery loop can tell, by probing.
        return RetryableError(
            f"{what}: {status}: {server_says}",
            retry_after=retry_after(headers),
            ambiguous=status == 500,
        )
    return RejectedError(f"{what}: {status}: {server_says}")


def created_share(what: str, answer: object) -> Share:
    """The share a create call answered with; not acknowledged without its id, secret and url."""
    fields = [answer.get(name) if isinstance(answer, dict) else None for name in SHARE_FIELDS]
    id, secret, url = fields
    if not (isinstance(id, str) and isinstance(secret, str) and isinstance(url, str)) or not all(
        fields
    ):
        raise RetryableError(f"{what}: not acknowledged: answer lacks id, secret or url")
    return Share(id=id, secret=secret, url=url)


def share_refusal(what: str, message: str, secrets: Iterable[str | None]) -> DeliveryError | None:
    """The share problem a receiver's message names by opencode's wording (a lost share, a
    refused secret, an existing share), or None when it names none of them."""
    for pattern, error in _THROWN:
        if pattern.match(message):
            return error(f"{what}: {excerpt(scrub(message, secrets))}")
    return None


def thrown(what: str, name: str, message: str, secrets: Iterable[str | None]) -> DeliveryError:
    """What an error thrown by a remote method (capnweb) means: a lost share, a refused
    secret or an existing share by opencode's messages; any other plain Error is retried a few
    times (opencode's functions also throw one when their storage fails), then refused; a
    TypeError or another kind names a batch the server will not take."""
    known = share_refusal(what, message, secrets)
    if known is not None:
        return known
    said = excerpt(scrub(message, secrets))
    if name == "Error":  # what a failing storage or an unknown server fault throws
        return ThrownError(f"{what}: receiver threw {name}: {said}")
    return RejectedError(f"{what}: receiver threw {name}: {said}")  # TypeError: a bad batch


def response_refusal(
    what: str,
    response: httpx.Response,
    *,
    secrets: Iterable[str | None] = (),
    key: str | None = None,
    share_call: bool = False,
) -> DeliveryError:
    """`refusal` for an httpx response."""
    return refusal(
        what,
        response.status_code,
        response.headers,
        response.text,
        secrets=secrets,
        key=key,
        share_call=share_call,
    )
